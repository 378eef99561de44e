# gpu_adaptive with dead and dying peers: no request is lost where a
# retry is safe (the peer is down, or it died before answering), and none
# is retried where it is not (tokens were sent: the client gets a
# terminated stream, not a duplicate).  Nodes: A and B are real gpu_pass
# servers (A throttled, so that its streams last); the others are fake
# peers that fail on cue, or a port nothing listens on.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;
use JSON::PP ();
use Time::HiRes ();

# 4 ms per step on A: a 400-token stream takes over 1.6 s
start_backend(args => ['--device', 'cpu', '--step-delay-us', '4000']);
start_backend(name => 'b', args => ['--device', 'cpu']);

$ENV{TEST_NGINX_NODE_A} = NgxGpuTest::free_port();
$ENV{TEST_NGINX_NODE_B} = NgxGpuTest::free_port();
$ENV{TEST_NGINX_DEAD} = NgxGpuTest::free_port();
$ENV{TEST_NGINX_CLOSER} = NgxGpuTest::fake_peer(mode => 'close');
$ENV{TEST_NGINX_MIDSTREAM} = NgxGpuTest::fake_peer(mode => 'midstream',
                                                   tag => 'fake', events => 2);

# the peers of an upstream from the status location, by port
sub status {
    my ($upstream) = @_;
    my ($st, undef, $body) = NgxGpuTest::http_request('GET', '/status');
    die "status: $st $body" unless $st == 200;
    my %peers;
    for my $p (@{ JSON::PP::decode_json($body)->{upstreams}{$upstream}{peers} }) {
        $peers{(split /:/, $p->{server})[1]} = $p;
    }
    return \%peers;
}

master_on();
workers(2);

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('main_config',
        'load_module $TEST_NGINX_GPU_MODULE;')
        unless defined $block->main_config;
    $block->set_value('http_config', <<'CONF') unless defined $block->http_config;
upstream pool {
    zone pool_peers 64k;
    gpu_adaptive interval=100ms;
    server 127.0.0.1:$TEST_NGINX_NODE_A;
    server 127.0.0.1:$TEST_NGINX_NODE_B;
    server 127.0.0.1:$TEST_NGINX_DEAD;
}
upstream closer {
    gpu_adaptive;
    server 127.0.0.1:$TEST_NGINX_CLOSER;
    server 127.0.0.1:$TEST_NGINX_NODE_B backup;
}
upstream midstream {
    gpu_adaptive;
    server 127.0.0.1:$TEST_NGINX_MIDSTREAM;
    server 127.0.0.1:$TEST_NGINX_NODE_B backup;
}
upstream killed {
    gpu_adaptive;
    server 127.0.0.1:$TEST_NGINX_NODE_A;
    server 127.0.0.1:$TEST_NGINX_NODE_B backup;
}
server {
    listen 127.0.0.1:$TEST_NGINX_NODE_A;
    location /v1/ { gpu_pass unix:$TEST_NGINX_GPU_SOCKET; }
}
server {
    listen 127.0.0.1:$TEST_NGINX_NODE_B;
    location /v1/ { gpu_pass unix:$TEST_NGINX_GPU_SOCKET_B; }
}
CONF
    $block->set_value('config', <<'CONF') unless defined $block->config;
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_next_upstream error timeout http_502 http_503 non_idempotent;

location /v1/ {
    proxy_pass http://pool;
}
location /closer/v1/ {
    proxy_pass http://closer/v1/;
}
location /closer-no-retry/v1/ {
    proxy_pass http://closer/v1/;
    proxy_next_upstream error timeout;
}
location /midstream/v1/ {
    proxy_pass http://midstream/v1/;
}
location /killed/v1/ {
    proxy_pass http://killed/v1/;
}
location = /status {
    gpu_upstream_status;
}
CONF
});

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a dead peer (connection refused): every request is answered by the others, the peer is taken out
--- init
my @r;
push @r, NgxGpuTest::http_concurrent(6, 'POST', '/v1/completions',
    '{"prompt":[1],"max_tokens":8,"temperature":0}', timeout => 10)
    for 1 .. 5;
my $ok = grep { $_->[0] == 200 && $_->[1] =~ /Once upon a time/ } @r;
Test::More::is($ok, 30, 'all 30 requests answered');
my $s = main::status('pool');
my $dead = $s->{$ENV{TEST_NGINX_DEAD}};
Test::More::ok($dead->{fails} >= 1, "the dead peer failed $dead->{fails} times");
# the upstream zone shares nginx's own failure state: every worker knows
Test::More::is($dead->{state}, 'unavailable',
               'max_fails=1 fail_timeout=10s: it is out');
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":8,"temperature":0}
--- response_body_like: "text":"Once upon a time, there was a"
--- error_log
connect() failed (111: Connection refused) while connecting to upstream



=== TEST 2: a peer that dies before answering: the POST goes to the next peer (proxy_next_upstream non_idempotent)
--- request
POST /closer/v1/completions
{"prompt":[1],"max_tokens":8,"temperature":0}
--- response_body_like: "text":"Once upon a time, there was a"
--- error_log
upstream prematurely closed connection while reading response header from upstream



=== TEST 3: without non_idempotent nginx does not send a POST twice: 502
--- request
POST /closer-no-retry/v1/completions
{"prompt":[1],"max_tokens":8,"temperature":0}
--- error_code: 502
--- error_log
upstream prematurely closed connection while reading response header from upstream



=== TEST 4: a peer that dies mid-stream: the client's stream ends there, unterminated, nothing from another peer
--- init
my $raw = NgxGpuTest::http_abort('POST', '/midstream/v1/completions',
    '{"prompt":[1],"max_tokens":8,"stream":true}', 5);
Test::More::like($raw, qr{^HTTP/1\.1 200 }, 'the stream started');
Test::More::like($raw, qr/"fake 1".*"fake 2"/s, 'the tokens sent came');
Test::More::unlike($raw, qr/Once upon|\[DONE\]/, 'nothing from another peer');
Test::More::unlike($raw, qr/\r\n0\r\n\r\n\z/,
                   'no last chunk: the client sees the stream was cut');
my $s = main::status('midstream');
Test::More::is($s->{$ENV{TEST_NGINX_NODE_B}}{requests}, 0,
               'the backup peer was not tried');
--- request
GET /status
--- error_log
upstream prematurely closed connection while reading upstream



=== TEST 5: a node whose backend is killed mid-stream: an error event ends the stream, the text is not sent twice
--- init
my $t0 = Time::HiRes::time();
NgxGpuTest::kill_backend_in(0.4);
my ($st, undef, $body) = NgxGpuTest::http_request('POST',
    '/killed/v1/completions',
    '{"prompt":[1],"max_tokens":400,"temperature":0,"stream":true}',
    timeout => 10);
Test::More::is($st, 200, 'the stream started');
my $n = () = $body =~ /"text":" upon"/g;
Test::More::is($n, 1, 'the first tokens came once');
Test::More::like($body, qr/data: \{"error":\{[^\n]*"code":"backend_terminated"\}\}\n\n\z/,
                 'an error event ends it');
Test::More::unlike($body, qr/\[DONE\]/, 'no [DONE]');
my $s = main::status('killed');
Test::More::is($s->{$ENV{TEST_NGINX_NODE_B}}{requests}, 0,
               'the backup node was not tried');
NgxGpuTest::wait_backend_restart($NgxGpuTest::last_killed, 10);
Time::HiRes::sleep(0.5);
--- request
POST /killed/v1/completions
{"prompt":[1],"max_tokens":8,"temperature":0}
--- response_body_like: "text":"Once upon a time, there was a"



=== TEST 6: a node whose backend is gone answers 503: every request goes to the other node, the node is backed off
--- init
NgxGpuTest::stop_backend();
Time::HiRes::sleep(0.2);
my @r;
push @r, NgxGpuTest::http_concurrent(5, 'POST', '/v1/completions',
    '{"prompt":[1],"max_tokens":8,"temperature":0}', timeout => 10)
    for 1 .. 4;
my $ok = grep { $_->[0] == 200 && $_->[1] =~ /Once upon a time/ } @r;
Test::More::is($ok, 20, 'all 20 requests answered');
my $s = main::status('pool');
my $a = $s->{$ENV{TEST_NGINX_NODE_A}};
Test::More::ok($a->{fails} >= 1, "node A failed $a->{fails} times (503)");
Test::More::ok($a->{backoff} < 1 || $a->{state} eq 'unavailable',
               "node A is backed off ($a->{state}, $a->{backoff})");
--- request
GET /status
--- response_body_like: "upstreams":\{"pool":

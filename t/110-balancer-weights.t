# gpu_adaptive's effective weights follow the load the nodes report.
# The nodes here are plain server blocks that answer with the
# X-GPU-Load header the client asks them for (X-Load-A: ... for node A),
# so every load a test needs is one request header away.  Two workers
# share the weights and counters through the zone; keepalive wraps the
# balancer.  stale=3s: a node the tests keep out must not be probed back in
# before a phase ends, however slowly a loaded machine runs it (TEST 3
# waits for the probing).
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;
use JSON::PP ();
use Time::HiRes ();

$ENV{TEST_NGINX_NODE_A} = NgxGpuTest::free_port();
$ENV{TEST_NGINX_NODE_B} = NgxGpuTest::free_port();
$ENV{TEST_NGINX_NODE_C} = NgxGpuTest::free_port();

our %port = (a => $ENV{TEST_NGINX_NODE_A}, b => $ENV{TEST_NGINX_NODE_B},
             c => $ENV{TEST_NGINX_NODE_C});

our $idle = 'queue=0,running=2,kv=0.200,latency_ms=40,tpot_ms=1.000';
our $busy = 'queue=6,running=30,kv=0.900,latency_ms=400,tpot_ms=6.000';

# the pool's peers from the status location, by node name
sub status {
    my ($st, undef, $body) = NgxGpuTest::http_request('GET', '/status');
    die "status: $st $body" unless $st == 200;
    my $pool = JSON::PP::decode_json($body)->{upstreams}{pool};
    my %peers;
    for my $p (@{ $pool->{peers} }) {
        for my $n (keys %port) {
            $peers{$n} = $p if $p->{server} eq "127.0.0.1:$port{$n}";
        }
    }
    return \%peers;
}

# $n requests through the balancer with these loads; returns who answered
sub drive {
    my ($n, %load) = @_;
    my %h = map { ('X-Load-' . uc($_) => $load{$_} // $idle) } keys %port;
    $h{'X-Fail-' . uc $load{fail}} = 1 if $load{fail};
    delete $h{'X-Load-FAIL'};
    my %got = (a => 0, b => 0, c => 0, error => 0);
    for (1 .. $n) {
        my ($st, undef, $body) = NgxGpuTest::http_request('GET', '/v1/x',
                                                          undef,
                                                          headers => \%h);
        chomp $body;
        $got{$st == 200 && exists $port{$body} ? $body : 'error'}++;
    }
    return \%got;
}

# B reports busy; an update passes.  How far B's weight falls depends on
# how many answers it gave before the first update (a quarter of the
# confidence each): about 0.3 of C's after one, 0.06 after four.  Once it
# is the lightest, sequential requests never pick it (of two choices the
# lighter loses), so a slow machine leaves it at one answer until stale.
sub push_b_down {
    drive(60, b => $busy);
    Time::HiRes::sleep(0.25);
}

sub weights {
    my ($s) = @_;
    return join ' ', map { "$_=$s->{$_}{effective_weight}" } sort keys %$s;
}

master_on();
workers(2);
no_root_location();

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value('main_config',
        'load_module $TEST_NGINX_GPU_MODULE;')
        unless defined $block->main_config;
    $block->set_value('http_config', <<'CONF') unless defined $block->http_config;
upstream pool {
    gpu_adaptive interval=100ms stale=3s;
    server 127.0.0.1:$TEST_NGINX_NODE_A weight=2;
    server 127.0.0.1:$TEST_NGINX_NODE_B;
    server 127.0.0.1:$TEST_NGINX_NODE_C;
    keepalive 8;
}
server {
    listen 127.0.0.1:$TEST_NGINX_NODE_A;
    location / {
        add_header X-GPU-Load $http_x_load_a always;
        return 200 "a\n";
    }
}
server {
    listen 127.0.0.1:$TEST_NGINX_NODE_B;
    location / {
        add_header X-GPU-Load $http_x_load_b always;
        return 200 "b\n";
    }
}
server {
    listen 127.0.0.1:$TEST_NGINX_NODE_C;
    location / {
        add_header X-GPU-Load $http_x_load_c always;
        if ($http_x_fail_c) {
            return 503;
        }
        return 200 "c\n";
    }
}
CONF
    $block->set_value('config', <<'CONF') unless defined $block->config;
location /v1/ {
    proxy_pass http://pool;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_next_upstream error timeout http_503;
}
location = /status {
    gpu_upstream_status;
}
CONF
});

no_shuffle();
run_tests();

__DATA__

=== TEST 1: equal loads: the effective weights are the static ones (A has weight=2)
--- init
my $got = main::drive(90);
Time::HiRes::sleep(0.35);
main::drive(30);
Time::HiRes::sleep(0.25);
my $s = main::status();
my ($a, $b, $c) = map { $s->{$_}{effective_weight} } qw(a b c);
Test::More::ok($b > 0.75 * $c && $c > 0.75 * $b,
               "B and C weigh the same (" . main::weights($s) . ")");
Test::More::ok($a > 1.5 * $b && $a < 2.7 * $b,
               "A weighs about twice as much (" . main::weights($s) . ")");
Test::More::is($got->{error}, 0, 'every request answered');
Test::More::ok($got->{$_} > 0, "node $_ got requests ($got->{$_} of 90)")
    for qw(a b c);
my $sum = 0;
$sum += $s->{$_}{requests} for qw(a b c);
Test::More::is($sum, 120, 'the two workers count into one zone');
--- request
GET /status
--- response_body_like chomp
^\{"upstreams":\{"pool":\{"zone":"gpu_adaptive_pool","interval_ms":100,"stale_ms":3000,"updates":\d+,"updated_ms_ago":\d+,"peers":\[\{"server":"127\.0\.0\.1:\d+","backup":false,"state":"up","weight":2,"effective_weight":[\d.]+,"factor":[\d.]+,"latency_ratio":[\d.]+,"backoff":1,"inflight":0,"requests":\d+,"fails":0,"overloads":0,"reported":\{"age_ms":\d+,"queue":0,"running":2,"kv":0\.2,"latency_ms":40,"tpot_ms":1\},"response_ms":[\d.]+,"first_byte_ms":[\d.]+\},



=== TEST 2: B reports queueing, a full KV cache and slow tokens: its weight drops, it gets next to nothing
--- init
main::push_b_down();
my $got = main::drive(60, b => $main::busy);
my $s = main::status();
my ($a, $b, $c) = map { $s->{$_}{effective_weight} } qw(a b c);
Test::More::ok($b < 0.35 * $c, "B's weight is down (" . main::weights($s) . ")");
Test::More::ok($got->{b} <= 6, "B got $got->{b} of the next 60 requests");
Test::More::is($got->{error}, 0, 'every request answered');
Test::More::is($s->{b}{reported}{queue}, 6, 'the status shows what B reported');
--- request
GET /status?format=prometheus
--- response_body_like chomp
(?s)# TYPE ngx_gpu_upstream_peer_effective_weight gauge\n.*ngx_gpu_upstream_peer_effective_weight\{upstream="pool",peer="127\.0\.0\.1:\d+"\} 0\.\d+\n.*ngx_gpu_upstream_peer_queue\{upstream="pool",peer="127\.0\.0\.1:\d+"\} 6\n.*ngx_gpu_upstream_peer_kv_cache_usage_ratio\{upstream="pool",peer="127\.0\.0\.1:\d+"\} 0\.9\n.*ngx_gpu_upstream_peer_reported_tpot_seconds\{upstream="pool",peer="127\.0\.0\.1:\d+"\} 0\.006\n.*ngx_gpu_upstream_peer_first_byte_seconds\{



=== TEST 3: B is idle again: its stale figures drift to the average, it is probed back in, its weight recovers
--- config
location /v1/ {
    proxy_pass http://pool;
}
location = /status {
    gpu_upstream_status;
}
--- init
# a fresh nginx: first B is made to look busy, then everyone reports idle
main::push_b_down();
main::drive(30, b => $main::busy);
my $s = main::status();
Test::More::ok($s->{b}{effective_weight} < 0.35 * $s->{c}{effective_weight},
               "B is down first (" . main::weights($s) . ")");
my $t0 = Time::HiRes::time();
my $back = 0;
while (Time::HiRes::time() - $t0 < 10) {
    main::drive(10);
    $s = main::status();
    if ($s->{b}{effective_weight} > 0.7 * $s->{c}{effective_weight}) {
        $back = 1;
        last;
    }
    Time::HiRes::sleep(0.1);
}
Test::More::ok($back, sprintf("B is back within %.1f s (%s)",
                              Time::HiRes::time() - $t0, main::weights($s)));
Test::More::is($s->{b}{state}, 'up', 'B is up');
--- request
GET /status
--- response_body_like: "server":"127\.0\.0\.1:\d+","backup":false,"state":"up","weight":1



=== TEST 4: an overload report (kv >= 0.95) backs B off at once, then it is probed back in
--- init
my $over = 'queue=0,running=2,kv=0.970,latency_ms=40,tpot_ms=1.000';
my $s;
for (1 .. 60) {
    main::drive(1, b => $over);
    $s = main::status();
    last if $s->{b}{overloads};
}
Test::More::ok($s->{b}{overloads} >= 1, "B reported overload");
Test::More::is($s->{b}{state}, 'backoff', 'B is backed off');
Test::More::ok($s->{b}{backoff} <= 0.1, "B's backoff is $s->{b}{backoff}");
Test::More::ok($s->{b}{effective_weight} < 0.2 * $s->{c}{effective_weight},
               "B's weight is down at once (" . main::weights($s) . ")");
Time::HiRes::sleep(0.8);
$s = main::status();
Test::More::is($s->{b}{backoff}, 1, 'the backoff doubled back to 1');
--- request
GET /status
--- response_body_like: "overloads":[1-9]



=== TEST 5: C answers 503: the request goes to another node, C is backed off and counted failed
--- init
# until C has been tried: with no load P2C mostly picks A (weight 2)
my ($s, %got);
for (1 .. 200) {
    my $got = main::drive(1, fail => 'c');
    $got{$_} += $got->{$_} for keys %$got;
    $s = main::status();
    last if $s->{c}{requests};
}
Test::More::is($got{error}, 0, 'every request answered');
Test::More::is($got{c}, 0, 'none by C');
Test::More::ok($s->{c}{fails} >= 1, "C failed $s->{c}{fails} times");
Test::More::ok($s->{c}{backoff} < 1, "C is backed off ($s->{c}{backoff})");
--- request
GET /status
--- response_body_like: "state":"(backoff|unavailable)"



=== TEST 6: the status location answers GET and HEAD only, and knows two formats
--- request
POST /status
--- error_code: 405



=== TEST 7: an unknown format
--- request
GET /status?format=xml
--- error_code: 400

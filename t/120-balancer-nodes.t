# Real GPU nodes behind gpu_adaptive: three gpu_pass servers, each with
# its own backend (stories260K on the CPU), node C throttled.  The nodes
# put X-GPU-Load on every answer and export the inference-extension
# gauges; the balancer's weights move away from the slow node.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;
use JSON::PP ();
use Time::HiRes ();

# a fixed step time (1 ms on A and B, 3 ms on C), not the CPU they
# share with everything else, is what tells the nodes' speeds apart
start_backend(args => ['--device', 'cpu', '--step-delay-us', '1000']);
start_backend(name => 'b', args => ['--device', 'cpu',
                                    '--step-delay-us', '1000']);
start_backend(name => 'c', args => ['--device', 'cpu',
                                    '--step-delay-us', '3000']);

$ENV{TEST_NGINX_NODE_A} = NgxGpuTest::free_port();
$ENV{TEST_NGINX_NODE_B} = NgxGpuTest::free_port();
$ENV{TEST_NGINX_NODE_C} = NgxGpuTest::free_port();

our %port = (a => $ENV{TEST_NGINX_NODE_A}, b => $ENV{TEST_NGINX_NODE_B},
             c => $ENV{TEST_NGINX_NODE_C});

sub status {
    my ($st, undef, $body) = NgxGpuTest::http_request('GET', '/status');
    die "status: $st $body" unless $st == 200;
    my %peers;
    for my $p (@{ JSON::PP::decode_json($body)->{upstreams}{pool}{peers} }) {
        for my $n (keys %port) {
            $peers{$n} = $p if $p->{server} eq "127.0.0.1:$port{$n}";
        }
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
    server 127.0.0.1:$TEST_NGINX_NODE_C;
}
server {
    listen 127.0.0.1:$TEST_NGINX_NODE_A;
    location /v1/ { gpu_pass unix:$TEST_NGINX_GPU_SOCKET; }
    location = /metrics { gpu_metrics; }
}
server {
    listen 127.0.0.1:$TEST_NGINX_NODE_B;
    location /v1/ { gpu_pass unix:$TEST_NGINX_GPU_SOCKET_B; }
}
server {
    listen 127.0.0.1:$TEST_NGINX_NODE_C;
    location /v1/ { gpu_pass unix:$TEST_NGINX_GPU_SOCKET_C; }
}
CONF
    $block->set_value('config', <<'CONF') unless defined $block->config;
location /node/v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
location /node/metrics {
    proxy_pass http://127.0.0.1:$TEST_NGINX_NODE_A/metrics;
}
location /v1/ {
    proxy_pass http://pool;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
}
location = /status {
    gpu_upstream_status;
}
CONF
});

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a node's completion carries X-GPU-Load from the backend's figures
--- request
POST /node/v1/completions
{"prompt":[1],"max_tokens":8,"temperature":0}
--- response_headers_like
X-GPU-Load: queue=\d+,running=\d+,kv=0\.\d{3}
--- response_body_like: "text":"Once upon a time, there was a"



=== TEST 2: after a completion the node reports its latency and time per token
--- init
NgxGpuTest::http_request('POST', '/node/v1/completions',
                         '{"prompt":[1],"max_tokens":16,"temperature":0}');
--- request
POST /node/v1/completions
{"prompt":[1],"max_tokens":8,"temperature":0,"stream":true}
--- response_headers_like
X-GPU-Load: queue=\d+,running=\d+,kv=0\.\d{3},latency_ms=\d+\.\d{3},tpot_ms=\d+\.\d{3}
Content-Type: text/event-stream
--- response_body_like: data: \[DONE\]



=== TEST 3: errors carry it too: 400
--- request
POST /node/v1/completions
{"prompt":""}
--- error_code: 400
--- response_headers_like
X-GPU-Load: queue=\d+,running=\d+,kv=0\.\d{3}.*



=== TEST 4: and 404
--- request
GET /node/v1/nothing
--- error_code: 404
--- response_headers_like
X-GPU-Load: queue=\d+,.*



=== TEST 5: gpu_metrics exports the inference extension's gauges by vLLM's names
--- request
GET /node/metrics
--- response_body_like chomp
(?s)# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting\{model_name="stories260K"\} 0\n.*# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running\{model_name="stories260K"\} 0\n.*# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc\{model_name="stories260K"\} 0\.\d{6}\n.*# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc\{model_name="stories260K"\} 0\.\d{6}\n



=== TEST 6: through the balancer: the slow node C gets a small share and the lowest weight
--- init
# every node has served a request before: it knows its latency
NgxGpuTest::http_request('POST', '/v1/completions',
    '{"prompt":[1],"max_tokens":16,"temperature":0}', port => $_)
    for values %main::port;
for my $round (1 .. 8) {
    my @r = NgxGpuTest::http_concurrent(6, 'POST', '/v1/completions',
        '{"prompt":[1],"max_tokens":32,"temperature":0}', timeout => 10);
    for (@r) {
        Test::More::is($_->[0], 200, 'answered') if $_->[0] != 200;
    }
    Time::HiRes::sleep(0.05);
}
my $s = main::status();
my $w = join ' ', map { "$_=$s->{$_}{effective_weight}/$s->{$_}{requests}" }
                  sort keys %$s;
Test::More::ok($s->{c}{effective_weight} < 0.5 * $s->{a}{effective_weight}
               && $s->{c}{effective_weight} < 0.5 * $s->{b}{effective_weight},
               "C weighs less than half of A and B (weight/requests: $w)");
Test::More::ok($s->{c}{requests} * 8 < $s->{a}{requests} + $s->{b}{requests},
               "C got less than a ninth of the requests ($w)");
Test::More::ok($s->{c}{reported}{tpot_ms} > 2 * $s->{a}{reported}{tpot_ms},
               "C reports slower tokens ($s->{c}{reported}{tpot_ms} ms vs "
               . "$s->{a}{reported}{tpot_ms} ms)");
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":8,"temperature":0}
--- response_headers_like
X-GPU-Load: queue=\d+,.*
--- response_body_like: "text":"Once upon a time, there was a"

# A client that goes away mid-generation: the backend stops that sequence
# within a step and frees its slot and KV cache; the running gauge and the
# KV-cache gauge fall back to zero, and the only slot is free again.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;

start_backend(args => ['--device', 'cpu', '--slots', '1',
                       '--step-delay-us', '5000']);

add_block_preprocessor { gpu_block_defaults($_[0], <<'CONF') };
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
location = /metrics {
    gpu_metrics;
}
CONF

no_shuffle();
run_tests();

__DATA__

=== TEST 1: the client hangs up 0.5 s into a 2-second stream
--- init
my $got = NgxGpuTest::http_abort('POST', '/v1/completions',
    '{"prompt":[1],"max_tokens":400,"temperature":0,"stream":true}', 0.5);
Test::More::like($got, qr/"text":" upon"/, "tokens were streaming");
Time::HiRes::sleep(0.2);
--- request
GET /metrics
--- error_code: 200
--- response_body_like chomp
(?=.*\nngx_gpu_num_requests_running\{model="stories260K"\} 0\n)(?=.*\nngx_gpu_kv_cache_usage_ratio\{model="stories260K"\} 0\n)(?=.*\nngx_gpu_requests_total\{code="499"\} 1\n)



=== TEST 2: the only slot is free again: a request succeeds at once
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":5,"temperature":0}
--- timeout: 2
--- error_code: 200
--- response_body_like chomp
"text":"Once upon a time,"



=== TEST 3: the client hangs up right after sending a request that is not streamed: cancelled at once, not generated to its end (2 s)
--- init
my $got = NgxGpuTest::http_abort('POST', '/v1/completions',
    '{"prompt":[1],"max_tokens":400,"temperature":0}', 0);
Test::More::is($got, '', "hung up before any answer");
Time::HiRes::sleep(0.3);
--- request
GET /metrics
--- error_code: 200
--- response_body_like chomp
(?=.*\nngx_gpu_num_requests_running\{model="stories260K"\} 0\n)(?=.*\nngx_gpu_kv_cache_usage_ratio\{model="stories260K"\} 0\n)(?=.*\nngx_gpu_requests_total\{code="499"\} 1\n)

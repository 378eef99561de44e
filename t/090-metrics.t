# /metrics in Prometheus text format and /health, after some traffic.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;

start_backend(args => ['--device', 'cpu']);

add_block_preprocessor { gpu_block_defaults($_[0], <<'CONF') };
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
location = /metrics {
    gpu_metrics;
}
location = /health {
    gpu_health;
}
CONF

no_shuffle();
run_tests();

__DATA__

=== TEST 1: counters, gauges and histograms after two requests and an error
--- init
NgxGpuTest::http_request('POST', '/v1/completions', '{"prompt":[1],"max_tokens":7,"temperature":0}');
NgxGpuTest::http_request('POST', '/v1/completions', '{"prompt":[1],"max_tokens":3,"temperature":0}');
NgxGpuTest::http_request('POST', '/v1/completions', '{"prompt":""}');
--- request
GET /metrics
--- error_code: 200
--- response_headers_like
Content-Type: text/plain.*
--- response_body_like chomp
(?=.*# TYPE ngx_gpu_requests_total counter\n)(?=.*\nngx_gpu_requests_total\{code="200"\} 2\n)(?=.*\nngx_gpu_requests_total\{code="400"\} 1\n)(?=.*# TYPE ngx_gpu_request_duration_seconds histogram\n)(?=.*\nngx_gpu_request_duration_seconds_count 2\n)(?=.*\nngx_gpu_request_duration_seconds_bucket\{le="\+Inf"\} 2\n)(?=.*# TYPE ngx_gpu_batch_size histogram\n)(?=.*\nngx_gpu_batch_size_count\{model="stories260K"\} \d+\n)(?=.*# TYPE ngx_gpu_num_requests_running gauge\n)(?=.*\nngx_gpu_num_requests_running\{model="stories260K"\} 0\n)(?=.*# TYPE ngx_gpu_num_requests_waiting gauge\n)(?=.*\nngx_gpu_num_requests_waiting\{model="stories260K"\} 0\n)(?=.*\nngx_gpu_generation_tokens_total\{model="stories260K"\} 10\n)(?=.*\nngx_gpu_prompt_tokens_total\{model="stories260K"\} 2\n)(?=.*\nngx_gpu_device_allocations_after_start_total\{model="stories260K"\} 0\n)(?=.*# TYPE ngx_gpu_graph_steps_total counter\n)(?=.*\nngx_gpu_graph_steps_total\{model="stories260K"\} 0\n)(?=.*# TYPE ngx_gpu_channel_slots_in_use gauge\n)(?=.*\nngx_gpu_channel_slots_in_use\{model="stories260K"\} 0\n)



=== TEST 2: health reports the backend, model and engine
--- request
GET /health
--- error_code: 200
--- response_body_like chomp
^\{"status":"ok","backend":"connected","model":"stories260K","engine":"cpu"

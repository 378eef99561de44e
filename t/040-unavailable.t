# When the backend cannot take a request: 503 with Retry-After if it is
# not running, 429 with Retry-After if its queue is full.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;

# one request slot, and slow steps, so that one request fills the queue
start_backend(args => ['--device', 'cpu', '--slots', '1',
                       '--step-delay-us', '5000']);

add_block_preprocessor { gpu_block_defaults($_[0]) };

no_shuffle();
run_tests();

__DATA__

=== TEST 1: no backend on the socket: 503 with Retry-After
--- config
location /v1/ {
    gpu_pass unix:/tmp/ngx-gpu-no-such-backend.sock;
    gpu_retry_after 3;
}
--- request
POST /v1/completions
{"prompt": "hi", "max_tokens": 4}
--- error_code: 503
--- response_headers
Retry-After: 3
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"[a-z_]+","param":null,"code":"[a-z_]+"\}\}$



=== TEST 2: health says so too
--- config
location = /health {
    gpu_health;
}
location /v1/ {
    gpu_pass unix:/tmp/ngx-gpu-no-such-backend.sock;
}
--- request
GET /health
--- error_code: 503
--- response_body_like chomp
"backend":"unavailable"



=== TEST 3: the only slot is busy: 429 with Retry-After
--- config
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
--- init
my $pid = fork();
if ($pid == 0) {
    NgxGpuTest::http_request('POST', '/v1/completions',
        '{"prompt": [1], "max_tokens": 300, "temperature": 0}');
    POSIX::_exit(0);
}
Time::HiRes::sleep(0.5);
--- request
POST /v1/completions
{"prompt": "hi", "max_tokens": 4}
--- error_code: 429
--- response_headers
Retry-After: 1
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"[a-z_]+","param":null,"code":"[a-z_]+"\}\}$



=== TEST 4: health is fine with a running backend
--- config
location = /health {
    gpu_health;
}
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
--- request
GET /health
--- error_code: 200
--- response_body_like chomp
^\{"status":"ok"

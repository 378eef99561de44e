# A model without a chat template ngx-gpu knows (stories260K has none)
# answers /v1/chat/completions with a clear 400; completions still work.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;

start_backend(args => ['--device', 'cpu']);

add_block_preprocessor { gpu_block_defaults($_[0], <<'CONF') };
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
CONF

no_shuffle();
run_tests();

__DATA__

=== TEST 1: chat without a known template: 400 chat_template_unknown
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi"}]}
--- error_code: 400
--- response_body
{"error":{"message":"This model has no chat template ngx-gpu knows, so it cannot serve chat completions; start its backend with --chat-template NAME","type":"invalid_request_error","param":"messages","code":"chat_template_unknown"}}



=== TEST 2: streamed, the same plain 400
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi"}], "stream": true}
--- error_code: 400
--- response_body_like chomp
"code":"chat_template_unknown"



=== TEST 3: completions are not affected
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 4, "temperature": 0}
--- error_code: 200
--- response_body_like chomp
"text":"Once upon a time"



=== TEST 4: a request error is still reported before the template one
--- request
POST /v1/chat/completions
{"messages": []}
--- error_code: 400
--- response_body_like chomp
"code":"empty_array"



=== TEST 5: GET on the chat endpoint: 405 with Allow
--- request
GET /v1/chat/completions
--- error_code: 405
--- response_headers
Allow: POST

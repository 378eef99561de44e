# The sampling fields' 400s, both endpoints: values out of range or of
# the wrong type, fields on the wrong endpoint, and the backend's own
# limits (--max-logprobs 10, --logprobs-tokens 64).  Each answer names
# the field in "param".  t/250-sampling.t checks what valid values do.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;

start_backend(args => ['--device', 'cpu', '--chat-template', 'chatml',
                       '--max-logprobs', '10', '--logprobs-tokens', '64']);

add_block_preprocessor { gpu_block_defaults($_[0], <<'CONF') };
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
CONF

no_shuffle();
run_tests();

__DATA__
=== TEST 1: top_k below -1
--- request
POST /v1/completions
{"prompt": "a", "top_k": -2}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*`top_k` must be -1 or 0[^"]*","type":"invalid_request_error","param":"top_k",



=== TEST 2: top_k not an integer
--- request
POST /v1/completions
{"prompt": "a", "top_k": 1.5}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*expected an integer[^"]*","type":"invalid_request_error","param":"top_k",



=== TEST 3: top_k a string
--- request
POST /v1/completions
{"prompt": "a", "top_k": "3"}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*expected an integer[^"]*","type":"invalid_request_error","param":"top_k",



=== TEST 4: presence_penalty above 2
--- request
POST /v1/completions
{"prompt": "a", "presence_penalty": 2.5}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*between -2 and 2[^"]*","type":"invalid_request_error","param":"presence_penalty",



=== TEST 5: frequency_penalty below -2 (chat)
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "Tell me a story."}], "frequency_penalty": -2.01}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*between -2 and 2[^"]*","type":"invalid_request_error","param":"frequency_penalty",



=== TEST 6: frequency_penalty a string
--- request
POST /v1/completions
{"prompt": "a", "frequency_penalty": "x"}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*expected a number[^"]*","type":"invalid_request_error","param":"frequency_penalty",



=== TEST 7: completions logprobs above 5
--- request
POST /v1/completions
{"prompt": "a", "logprobs": 6}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*from 0 to 5[^"]*","type":"invalid_request_error","param":"logprobs",



=== TEST 8: completions logprobs negative
--- request
POST /v1/completions
{"prompt": "a", "logprobs": -1}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*from 0 to 5[^"]*","type":"invalid_request_error","param":"logprobs",



=== TEST 9: completions logprobs a boolean
--- request
POST /v1/completions
{"prompt": "a", "logprobs": true}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*expected an integer[^"]*","type":"invalid_request_error","param":"logprobs",



=== TEST 10: top_logprobs on completions
--- request
POST /v1/completions
{"prompt": "a", "top_logprobs": 2}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*Unrecognized request argument[^"]*","type":"invalid_request_error","param":"top_logprobs",



=== TEST 11: chat logprobs an integer
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "Tell me a story."}], "logprobs": 1}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*expected a boolean[^"]*","type":"invalid_request_error","param":"logprobs",



=== TEST 12: chat top_logprobs above 20
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "Tell me a story."}], "logprobs": true, "top_logprobs": 21}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*from 0 to 20[^"]*","type":"invalid_request_error","param":"top_logprobs",



=== TEST 13: chat top_logprobs without logprobs
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "Tell me a story."}], "top_logprobs": 3}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*requires `logprobs`[^"]*","type":"invalid_request_error","param":"top_logprobs",



=== TEST 14: chat top_logprobs with logprobs false
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "Tell me a story."}], "logprobs": false, "top_logprobs": 3}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*requires `logprobs`[^"]*","type":"invalid_request_error","param":"top_logprobs",



=== TEST 15: chat top_logprobs over the backend's --max-logprobs 10
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "Tell me a story."}], "logprobs": true, "top_logprobs": 11}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*at most 10 alternatives[^"]*","type":"invalid_request_error","param":"top_logprobs",



=== TEST 16: max_tokens over the backend's --logprobs-tokens 64
--- request
POST /v1/completions
{"prompt": "a", "logprobs": 1, "max_tokens": 65}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*at most 64[^"]*","type":"invalid_request_error","param":"max_tokens",



=== TEST 17: null sampling fields are their defaults
--- request
POST /v1/completions
{"prompt": "a", "max_tokens": 2, "top_k": null, "presence_penalty": null, "frequency_penalty": null, "logprobs": null}
--- error_code: 200
--- response_body_like chomp
"logprobs":null

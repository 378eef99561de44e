# Bad requests get a clear HTTP status and an OpenAI-style error body:
# {"error":{"message":...,"type":...,"param":...,"code":...}}
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;

start_backend(args => ['--device', 'cpu', '--max-new-tokens', '256']);

add_block_preprocessor { gpu_block_defaults($_[0], <<'CONF') };
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
    gpu_max_body_size 4k;
}
CONF

no_shuffle();
run_tests();

__DATA__

=== TEST 1: malformed JSON
--- request
POST /v1/completions
{"prompt": "hi", "max_tokens": 4
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"invalid_request_error","param":null,"code":"invalid_json"\}\}$



=== TEST 2: the body is not a JSON object
--- request
POST /v1/completions
["hi"]
--- error_code: 400
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"invalid_request_error",



=== TEST 3: prompt of the wrong type
--- request
POST /v1/completions
{"prompt": 12, "max_tokens": 4}
--- error_code: 400
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"invalid_request_error","param":"prompt",



=== TEST 4: max_tokens of the wrong type
--- request
POST /v1/completions
{"prompt": "hi", "max_tokens": "four"}
--- error_code: 400
--- response_body_like chomp
"param":"max_tokens"



=== TEST 5: temperature out of range
--- request
POST /v1/completions
{"prompt": "hi", "temperature": 5}
--- error_code: 400
--- response_body_like chomp
"param":"temperature"



=== TEST 6: empty prompt string
--- request
POST /v1/completions
{"prompt": "", "max_tokens": 4}
--- error_code: 400
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"invalid_request_error","param":"prompt",



=== TEST 7: empty prompt array
--- request
POST /v1/completions
{"prompt": [], "max_tokens": 4}
--- error_code: 400
--- response_body_like chomp
"param":"prompt"



=== TEST 8: token id beyond the vocabulary (512 tokens)
--- request
POST /v1/completions
{"prompt": [1, 512], "max_tokens": 4}
--- error_code: 400
--- response_body_like chomp
^\{"error":\{"message":"[^"]*512[^"]*","type":"invalid_request_error","param":"prompt",



=== TEST 9: negative token id
--- request
POST /v1/completions
{"prompt": [1, -3], "max_tokens": 4}
--- error_code: 400
--- response_body_like chomp
"param":"prompt"



=== TEST 10: max_tokens below 1
--- request
POST /v1/completions
{"prompt": "hi", "max_tokens": 0}
--- error_code: 400
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"invalid_request_error","param":"max_tokens",



=== TEST 11: max_tokens over the backend's limit (256)
--- request
POST /v1/completions
{"prompt": "hi", "max_tokens": 257}
--- error_code: 400
--- response_body_like chomp
"param":"max_tokens"



=== TEST 12: token prompt plus max_tokens over the context (512)
--- request eval
"POST /v1/completions\n" . '{"prompt": [' . join(',', (1) x 300) . '], "max_tokens": 250}'
--- error_code: 400
--- response_body_like chomp
^\{"error":\{"message":"[^"]*context[^"]*","type":"invalid_request_error","param":"prompt","code":"context_length_exceeded"\}\}$



=== TEST 13: text prompt plus max_tokens over the context (the backend counts)
--- request eval
"POST /v1/completions\n" . '{"prompt": "' . ('abc ' x 400) . '", "max_tokens": 200}'
--- error_code: 400
--- response_body_like chomp
^\{"error":\{"message":"This model's maximum context length is 512 tokens[^"]*","type":"invalid_request_error","param":"prompt","code":"context_length_exceeded"\}\}$



=== TEST 14: body over gpu_max_body_size
--- request eval
"POST /v1/completions\n" . '{"prompt": "' . ('x' x 5000) . '"}'
--- error_code: 413
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"invalid_request_error",



=== TEST 15: wrong method
--- request
GET /v1/completions
--- error_code: 405
--- response_headers
Allow: POST
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"invalid_request_error",



=== TEST 16: an argument the API does not have
--- request
POST /v1/completions
{"prompt": "hi", "frobnicate": true}
--- error_code: 400
--- response_body_like chomp
"message":"Unrecognized request argument supplied: frobnicate"



=== TEST 17: an OpenAI argument not implemented yet is refused, not dropped
--- request
POST /v1/completions
{"prompt": "hi", "repetition_penalty": 1.5}
--- error_code: 400
--- response_body_like chomp
"param":"repetition_penalty"



=== TEST 18: a model this server does not serve
--- request
POST /v1/completions
{"model": "gpt-5", "prompt": "hi"}
--- error_code: 404
--- response_body_like chomp
"code":"model_not_found"



=== TEST 19: an unknown path under the API
--- request
GET /v1/nothing
--- error_code: 404
--- response_body_like chomp
^\{"error":\{"message":"[^"]+",



=== TEST 20: the server still answers after all of that
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 5, "temperature": 0}
--- error_code: 200
--- response_body_like chomp
"text":"Once upon a time,"



=== TEST 21: a malformed chunked body: nginx's 400 comes as the JSON error
--- raw_request eval
"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"The HTTP request is malformed","type":"invalid_request_error","param":null,"code":"bad_request"\}\}$



=== TEST 22: a body over nginx's client_max_body_size: its 413 is the JSON error too
--- config
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
    client_max_body_size 1k;
}
--- request eval
"POST /v1/completions\n" . '{"prompt": "' . ('x' x 2000) . '"}'
--- error_code: 413
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"Request body too large: the limit is 1024 bytes","type":"invalid_request_error","param":null,"code":"request_too_large"\}\}$



=== TEST 23: a chunked body over client_max_body_size, found while it is read
--- config
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
    client_max_body_size 1k;
}
--- raw_request eval
"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" . ('x' x 2000) . "\r\n0\r\n\r\n"
--- error_code: 413
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"Request body too large: the limit is 1024 bytes","type":"invalid_request_error","param":null,"code":"request_too_large"\}\}$



=== TEST 24: an overlong UTF-8 form in a string (yajl checks only the shape)
--- request eval
"POST /v1/completions\n" . qq({"prompt": "a\xc0\xafb", "max_tokens": 2})
--- error_code: 400
--- response_body_like chomp
^\{"error":\{"message":"We could not parse the JSON body of your request \(a string is not valid UTF-8\)","type":"invalid_request_error","param":null,"code":"invalid_json"\}\}$



=== TEST 25: a UTF-16 surrogate encoded as UTF-8, in a key
--- request eval
"POST /v1/completions\n" . qq({"prompt": "a", "\xed\xa0\x80": 1})
--- error_code: 400
--- response_body_like chomp
"message":"We could not parse the JSON body of your request \(a string is not valid UTF-8\)",.*"code":"invalid_json"



=== TEST 26: a code point above U+10FFFF
--- request eval
"POST /v1/completions\n" . qq({"prompt": "x", "user": "\xf4\x90\x80\x80", "max_tokens": 2})
--- error_code: 400
--- response_body_like chomp
"code":"invalid_json"



=== TEST 27: a lone high surrogate escape is refused, not decoded as "?"
--- request
POST /v1/completions
{"prompt": "a\ud800b", "max_tokens": 2}
--- error_code: 400
--- response_body_like chomp
^\{"error":\{"message":"We could not parse the JSON body of your request \(a \\\\u escape is half of a UTF-16 surrogate pair\)","type":"invalid_request_error","param":null,"code":"invalid_json"\}\}$



=== TEST 28: a high surrogate escape before another escape, not a wrong character
--- request
POST /v1/completions
{"prompt": "\ud800\u0041", "max_tokens": 2}
--- error_code: 400
--- response_body_like chomp
"code":"invalid_json"



=== TEST 29: a lone low surrogate escape
--- request
POST /v1/completions
{"prompt": "x", "max_tokens": 2, "stop": "\udc00"}
--- error_code: 400
--- response_body_like chomp
"code":"invalid_json"



=== TEST 30: a surrogate pair and an escaped backslash before "u" are text
--- request
POST /v1/completions
{"prompt": "\ud83e\udd99 \\ud800", "max_tokens": 2}
--- error_code: 200
--- response_body_like chomp
"usage":\{"prompt_tokens":\d+,"completion_tokens":2,

# stream: true sends Server-Sent Events, one chunk per generated token,
# a last chunk with finish_reason, optionally a usage chunk, and
# "data: [DONE]".
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

=== TEST 1: token-by-token events carry the known story, then [DONE]
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":8,"temperature":0,"stream":true}
--- error_code: 200
--- response_headers
Content-Type: text/event-stream
Cache-Control: no-cache
--- response_body_like chomp
^data: \{"id":"(cmpl-[0-9a-f]{24})","object":"text_completion","created":\d+,"model":"stories260K","choices":\[\{"text":"Once","index":0,"logprobs":null,"finish_reason":null\}\]\}\n\ndata: \{"id":"\1",[^\n]*"text":" upon",[^\n]*\n\ndata: [^\n]*"text":" a"[^\n]*\n\ndata: [^\n]*"text":" time"[^\n]*\n\n(?:data: [^\n]*"finish_reason":null\}\]\}\n\n){4}data: \{"id":"\1",[^\n]*"choices":\[\{"text":"","index":0,"logprobs":null,"finish_reason":"length"\}\]\}\n\ndata: \[DONE\]\n\n$



=== TEST 2: include_usage adds a usage chunk with empty choices before [DONE]
--- request
POST /v1/completions
{"prompt":"Once upon a time","max_tokens":3,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}
--- error_code: 200
--- response_body_like chomp
"finish_reason":"length"\}\]\}\n\ndata: \{"id":"cmpl-[0-9a-f]{24}","object":"text_completion","created":\d+,"model":"stories260K","choices":\[\],"usage":\{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8\}\}\n\ndata: \[DONE\]\n\n$



=== TEST 3: a stream that meets end-of-sequence ends with finish_reason stop
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":400,"temperature":0,"stream":true}
--- error_code: 200
--- response_body_like chomp
"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n$

# stop on /v1/completions: up to 4 strings; generation ends before the
# first one the text would contain, none of it is ever sent (streamed
# text that could still become a stop string is held back), and
# finish_reason is "stop".  stories260K greedy from BOS says "Once upon a
# time, there was a little girl named Lily. ..."
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

=== TEST 1: a stop string split across tokens (" little" + " girl")
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 30, "temperature": 0, "stop": ["little g"]}
--- error_code: 200
--- response_body_like chomp
"choices":\[\{"text":"Once upon a time, there was a ","index":0,"logprobs":null,"finish_reason":"stop"\}\],"usage":\{"prompt_tokens":1,"completion_tokens":10,"total_tokens":11\}



=== TEST 2: streamed: the held back " little" never goes out
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 30, "temperature": 0, "stop": ["little g"], "stream": true}
--- error_code: 200
--- response_body_like chomp
^data: [^\n]*"text":"Once",[^\n]*\n\n(data: [^\n]*"text":" (upon|a|time|there|was)?",[^\n]*\n\n|data: [^\n]*"text":",",[^\n]*\n\n){8}data: [^\n]*"text":"","index":0,"logprobs":null,"finish_reason":null[^\n]*\n\ndata: [^\n]*"text":"","index":0,"logprobs":null,"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n$



=== TEST 3: a single string, inside a token
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 30, "temperature": 0, "stop": "ime"}
--- error_code: 200
--- response_body_like chomp
"text":"Once upon a t","index":0,"logprobs":null,"finish_reason":"stop"



=== TEST 4: of several, the earliest in the text wins
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 30, "temperature": 0, "stop": ["Lily", "there", "upon", "named"]}
--- error_code: 200
--- response_body_like chomp
"text":"Once ","index":0,"logprobs":null,"finish_reason":"stop"



=== TEST 5: a stop string at the very start: empty text
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 30, "temperature": 0, "stop": ["Once"]}
--- error_code: 200
--- response_body_like chomp
"text":"","index":0,"logprobs":null,"finish_reason":"stop"\}\],"usage":\{"prompt_tokens":1,"completion_tokens":1,



=== TEST 6: a stop string that never comes: all of the text, length
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 9, "temperature": 0, "stop": ["little girl!", "Once upon a time, there was a little girl named Lily. She"]}
--- error_code: 200
--- response_body_like chomp
"text":"Once upon a time, there was a little","index":0,"logprobs":null,"finish_reason":"length"



=== TEST 7: streamed, held back text goes out with the token that shows it is no stop string
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 12, "temperature": 0, "stop": ["a little boy"], "stream": true}
--- error_code: 200
--- response_body_like chomp
"text":" was",[^\n]*\n\ndata: [^\n]*"text":" ",[^\n]*\n\ndata: [^\n]*"text":"",[^\n]*\n\ndata: [^\n]*"text":"a little g",[^\n]*\n\ndata: [^\n]*"text":"ir",[^\n]*\n\ndata: [^\n]*"text":"l",[^\n]*\n\ndata: [^\n]*"text":"","index":0,"logprobs":null,"finish_reason":"length"\}\]\}\n\ndata: \[DONE\]\n\n$



=== TEST 8: streamed, text held back until the end is sent with the last token
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 12, "temperature": 0, "stop": ["a little girl!"], "stream": true}
--- error_code: 200
--- response_body_like chomp
"text":" was",[^\n]*\n\ndata: [^\n]*"text":" ",[^\n]*\n\ndata: [^\n]*"text":"",[^\n]*\n\ndata: [^\n]*"text":"",[^\n]*\n\ndata: [^\n]*"text":"",[^\n]*\n\ndata: [^\n]*"text":"a little girl",[^\n]*\n\ndata: [^\n]*"text":"","index":0,"logprobs":null,"finish_reason":"length"\}\]\}\n\ndata: \[DONE\]\n\n$



=== TEST 9: null is no stop
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 4, "temperature": 0, "stop": null}
--- error_code: 200
--- response_body_like chomp
"text":"Once upon a time","index":0,"logprobs":null,"finish_reason":"length"



=== TEST 10: at most 4 strings
--- request
POST /v1/completions
{"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}
--- error_code: 400
--- response_body_like chomp
"message":"`stop` may hold at most 4 sequences","type":"invalid_request_error","param":"stop","code":"invalid_value"



=== TEST 11: an empty string is refused
--- request
POST /v1/completions
{"prompt": "hi", "stop": [""]}
--- error_code: 400
--- response_body_like chomp
"message":"each `stop` sequence must be 1 to 256 bytes long"



=== TEST 12: a string of more than 256 bytes is refused
--- request eval
"POST /v1/completions\n{\"prompt\": \"hi\", \"stop\": \"" . ("x" x 257) . "\"}"
--- error_code: 400
--- response_body_like chomp
"param":"stop","code":"invalid_value"



=== TEST 13: a number is the wrong type
--- request
POST /v1/completions
{"prompt": "hi", "stop": 5}
--- error_code: 400
--- response_body_like chomp
"message":"Invalid type for `stop`: expected a string or an array of strings","type":"invalid_request_error","param":"stop","code":"invalid_type"



=== TEST 14: so is an array inside the array
--- request
POST /v1/completions
{"prompt": "hi", "stop": [["x"]]}
--- error_code: 400
--- response_body_like chomp
"code":"invalid_type"

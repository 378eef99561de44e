# POST /v1/chat/completions on stories260K with the ChatML template forced
# (--chat-template chatml): OpenAI's chat.completion and
# chat.completion.chunk shapes, the prompt rendered as Hugging Face's
# apply_chat_template renders it (usage.prompt_tokens against
# scripts/chat-oracle: jinja2 + tokenizers), and request validation.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;

my $model = model_dir_or_skip();
start_backend(args => ['--device', 'cpu', '--chat-template', 'chatml']);

# prompt_tokens as HF counts them, or undef (the test is then skipped)
sub hf_tokens {
    my ($messages) = @_;
    my $py = 'build/venv/bin/python';
    return undef unless -x $py;
    open(my $fh, '-|', $py, 'scripts/chat-oracle', $model, $messages,
         't/data/chatml.jinja') or return undef;
    my $out = do { local $/; <$fh> };
    close $fh;
    return $out =~ /"prompt_tokens": (\d+)/ ? $1 : undef;
}

our $n_plain = hf_tokens('[{"role":"user","content":"Tell me a story."}]');
our $n_multi = hf_tokens('[{"role":"system","content":"You tell stories."},'
    . '{"role":"user","content":"Once"},{"role":"assistant",'
    . '"content":"upon a time"},{"role":"user","content":"Go on\n  "}]');
our $n_parts = hf_tokens('[{"role":"user","content":"Lily\nand Tim"}]');

add_block_preprocessor { gpu_block_defaults($_[0], <<'CONF') };
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
CONF

no_shuffle();
run_tests();

__DATA__

=== TEST 1: chat.completion: exact shape, prompt counted as HF renders it
--- skip_eval: 2: !defined $main::n_plain
--- request
POST /v1/chat/completions
{"model": "stories260K", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 8, "temperature": 0}
--- error_code: 200
--- response_headers
Content-Type: application/json
--- response_body_like eval
qr/^\{"id":"chatcmpl-[0-9a-f]{24}","object":"chat\.completion","created":\d+,"model":"stories260K","choices":\[\{"index":0,"message":\{"role":"assistant","content":"(?:[^"\\]|\\.)*"\},"logprobs":null,"finish_reason":"length"\}\],"usage":\{"prompt_tokens":$main::n_plain,"completion_tokens":8,"total_tokens":\d+\}\}\n$/



=== TEST 2: system, user and assistant turns
--- skip_eval: 2: !defined $main::n_multi
--- request
POST /v1/chat/completions
{"messages": [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Once"}, {"role": "assistant", "content": "upon a time"}, {"role": "user", "content": "Go on\n  "}], "max_tokens": 2}
--- error_code: 200
--- response_body_like eval
qr/"usage":\{"prompt_tokens":$main::n_multi,"completion_tokens":2,/



=== TEST 3: content as text parts, joined with newlines
--- skip_eval: 2: !defined $main::n_parts
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": [{"type": "text", "text": "Lily"}, {"text": "and Tim", "type": "text"}]}], "max_completion_tokens": 3}
--- error_code: 200
--- response_body_like eval
qr/"usage":\{"prompt_tokens":$main::n_parts,"completion_tokens":3,/



=== TEST 4: chat.completion.chunk: role first, content deltas, delta {} with the finish, usage, [DONE]
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}
--- error_code: 200
--- response_headers
Content-Type: text/event-stream
--- response_body_like chomp
^data: \{"id":"(chatcmpl-[0-9a-f]{24})","object":"chat\.completion\.chunk","created":\d+,"model":"stories260K","choices":\[\{"index":0,"delta":\{"role":"assistant","content":""\},"logprobs":null,"finish_reason":null\}\]\}\n\n(data: \{"id":"\1","object":"chat\.completion\.chunk","created":\d+,"model":"stories260K","choices":\[\{"index":0,"delta":\{"content":"(?:[^"\\]|\\.)+"\},"logprobs":null,"finish_reason":null\}\]\}\n\n){1,4}data: \{"id":"\1",[^\n]*"choices":\[\{"index":0,"delta":\{\},"logprobs":null,"finish_reason":"length"\}\]\}\n\ndata: \{"id":"\1","object":"chat\.completion\.chunk","created":\d+,"model":"stories260K","choices":\[\],"usage":\{"prompt_tokens":\d+,"completion_tokens":4,"total_tokens":\d+\}\}\n\ndata: \[DONE\]\n\n$



=== TEST 5: a stop string ends the answer before it, finish_reason stop
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 200, "temperature": 0, "stop": ["."]}
--- error_code: 200
--- response_body_like chomp
"message":\{"role":"assistant","content":"(?:[^"\\.]|\\[^.])+"\},"logprobs":null,"finish_reason":"stop"



=== TEST 6: streamed with a stop string: no delta carries any of it
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 200, "temperature": 0, "stop": "."   , "stream": true}
--- error_code: 200
--- response_body_like chomp
^(data: \{"id":"chatcmpl-[0-9a-f]{24}","object":"chat\.completion\.chunk","created":\d+,"model":"stories260K","choices":\[\{"index":0,"delta":\{("role":"assistant","content":""|"content":"(?:[^"\\.]|\\[^.])+")\},"logprobs":null,"finish_reason":null\}\]\}\n\n)+data: [^\n]*"delta":\{\},"logprobs":null,"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n$



=== TEST 7: messages is required
--- request
POST /v1/chat/completions
{"model": "stories260K"}
--- error_code: 400
--- response_body_like chomp
"message":"Missing required parameter: `messages`","type":"invalid_request_error","param":"messages","code":"missing_required_parameter"



=== TEST 8: messages must not be empty
--- request
POST /v1/chat/completions
{"messages": []}
--- error_code: 400
--- response_body_like chomp
"param":"messages","code":"empty_array"



=== TEST 9: messages must be an array of objects
--- request
POST /v1/chat/completions
{"messages": ["hi"]}
--- error_code: 400
--- response_body_like chomp
"message":"Invalid type for `messages\[0\]`: expected an object","type":"invalid_request_error","param":"messages","code":"invalid_type"



=== TEST 10: a message needs a role
--- request
POST /v1/chat/completions
{"messages": [{"content": "hi"}]}
--- error_code: 400
--- response_body_like chomp
"message":"Missing required parameter: `messages\[0\].role`"



=== TEST 11: a message needs content
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "a"}, {"role": "user"}]}
--- error_code: 400
--- response_body_like chomp
"message":"Missing required parameter: `messages\[1\].content`"



=== TEST 12: an unknown role
--- request
POST /v1/chat/completions
{"messages": [{"role": "wizard", "content": "hi"}]}
--- error_code: 400
--- response_body_like chomp
"message":"Invalid value for `messages\[0\].role`: `wizard` is not one of system, developer, user, assistant","type":"invalid_request_error","param":"messages","code":"invalid_value"



=== TEST 13: tool messages are not supported yet
--- request
POST /v1/chat/completions
{"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}
--- error_code: 400
--- response_body_like chomp
"code":"unsupported_value"



=== TEST 14: image parts are refused, not dropped
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}
--- error_code: 400
--- response_body_like chomp
"message":"content parts of type `image_url` are not supported: text only","type":"invalid_request_error","param":"messages","code":"unsupported_value"



=== TEST 15: a part needs its text
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": [{"type": "text"}]}]}
--- error_code: 400
--- response_body_like chomp
"code":"missing_required_parameter"



=== TEST 16: an unknown key in a message
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi", "mood": "happy"}]}
--- error_code: 400
--- response_body_like chomp
"message":"Unrecognized request argument supplied: messages\[0\].mood","type":"invalid_request_error","param":"messages","code":"unknown_parameter"



=== TEST 17: name is not supported yet (not silently dropped)
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi", "name": "bob"}]}
--- error_code: 400
--- response_body_like chomp
"message":"`messages\[0\].name` is not supported yet"



=== TEST 18: prompt belongs to /v1/completions
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi"}], "prompt": "x"}
--- error_code: 400
--- response_body_like chomp
"message":"Unrecognized request argument supplied: prompt"



=== TEST 19: messages belongs to /v1/chat/completions
--- request
POST /v1/completions
{"prompt": "x", "messages": []}
--- error_code: 400
--- response_body_like chomp
"message":"Unrecognized request argument supplied: messages"



=== TEST 20: logprobs false and empty tools are the defaults, accepted
--- request
POST /v1/chat/completions
{"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}], "logprobs": false, "tools": [], "max_tokens": 1}
--- error_code: 200
--- response_body_like chomp
"finish_reason":"(length|stop)"



=== TEST 21: logit_bias is not supported yet
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 1}}
--- error_code: 400
--- response_body_like chomp
"param":"logit_bias","code":"unsupported_parameter"



=== TEST 22: a wrong content type
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": 42}]}
--- error_code: 400
--- response_body_like chomp
"message":"Invalid type for `messages\[0\].content`: expected a string or an array of content parts"



=== TEST 23: content as an empty array of parts is an empty message
--- request
POST /v1/chat/completions
{"messages": [{"role": "system", "content": []}, {"role": "user", "content": "hi"}], "max_tokens": 2}
--- error_code: 200
--- response_body_like chomp
"object":"chat\.completion",.*"completion_tokens":2,

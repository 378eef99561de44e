# Chat and streaming on a byte-level BPE model: the Qwen3 tokenizer from
# ../shared with scripted weights (scripts/make-scripted-model) that
# always answer "Hello! The llama 🦙 says 你好世界, then 𝄞 plays." and
# then <|im_end|>.  🦙 and 𝄞 each span three tokens: a stream must carry
# each character whole, never U+FFFD.  Prompts are rendered with the
# model's real Qwen3 chat template: usage.prompt_tokens must equal what
# HF's apply_chat_template + tokenizers give (scripts/chat-oracle).
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;
use NgxGpuScripted;

my $model = scripted_model_or_skip();
start_backend(model => $model, args => ['--device', 'cpu']);

sub bytes_of { my $s = shift; utf8::encode($s); return $s }

our $text = bytes_of(scripted_text());
our $n_user = hf_chat_tokens('[{"role":"user","content":"hi"}]');
our $n_think = hf_chat_tokens('[{"role":"system","content":"Be kind."},'
    . '{"role":"user","content":"2+2?"},{"role":"assistant","content":'
    . '"<think>\nadd\n</think>\n\n4"},{"role":"user","content":"and 3+3?"}]');
our $n_parts = hf_chat_tokens('[{"role":"user","content":"caf\u00e9\n'
    . '\u4f60\u597d \ud83e\udd99"}]');
our $n_text = hf_text_tokens("Hello \x{1f999} \x{4e16}\x{754c}, don't "
    . "I'M 12345");

# the deltas of the answer, in order
our @pieces = map { bytes_of($_) } ('Hello', '!', ' The', ' llama', ' ',
    "\x{1f999}", ' says', ' ', "\x{4f60}\x{597d}", "\x{4e16}\x{754c}", ',',
    ' then', ' ', "\x{1d11e}", ' plays', '.');
our $head = qr/data: \{"id":"chatcmpl-[0-9a-f]{24}","object":"chat\.completion\.chunk","created":\d+,"model":"scripted-qwen3","choices":\[\{"index":0,/;
our $stream = join('', map { "$head\"delta\":\\{\"content\":\"\Q$_\E\"\\},\"logprobs\":null,\"finish_reason\":null\\}\\]\\}\\n\\n" } @pieces);

add_block_preprocessor { gpu_block_defaults($_[0], <<'CONF') };
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
CONF

no_shuffle();
run_tests();

__DATA__

=== TEST 1: the scripted answer, ended by <|im_end|>; the prompt as HF renders and counts it
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
--- error_code: 200
--- response_body_like eval
qr/^\{"id":"chatcmpl-[0-9a-f]{24}","object":"chat\.completion","created":\d+,"model":"scripted-qwen3","choices":\[\{"index":0,"message":\{"role":"assistant","content":"\Q$main::text\E"\},"logprobs":null,"finish_reason":"stop"\}\],"usage":\{"prompt_tokens":$main::n_user,"completion_tokens":18,"total_tokens":\d+\}\}\n$/



=== TEST 2: Qwen3's template drops an earlier turn's <think> block, as HF does
--- request
POST /v1/chat/completions
{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"}, {"role": "user", "content": "and 3+3?"}], "max_tokens": 1}
--- error_code: 200
--- response_body_like eval
qr/"usage":\{"prompt_tokens":$main::n_think,"completion_tokens":1,/



=== TEST 3: NFC, CJK and emoji in the prompt, given as text parts
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": [{"type": "text", "text": "cafe\u0301"}, {"type": "text", "text": "你好 🦙"}]}], "max_tokens": 1}
--- error_code: 200
--- response_body_like eval
qr/"usage":\{"prompt_tokens":$main::n_parts,"completion_tokens":1,/



=== TEST 4: streamed: each character whole in one delta (🦙 and 𝄞 span three tokens)
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "stream": true}
--- error_code: 200
--- response_body_like eval
qr/^${main::head}"delta":\{"role":"assistant","content":""\},"logprobs":null,"finish_reason":null\}\]\}\n\n$main::stream${main::head}"delta":\{\},"logprobs":null,"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n$/



=== TEST 5: never U+FFFD, raw or escaped
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "stream": true}
--- error_code: 200
--- response_body_unlike eval
qr/\xef\xbf\xbd|\\ufffd/i



=== TEST 6: a stop string that starts inside a token: nothing of 🦙 goes out
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi"}], "stop": ["🦙 says"]}
--- error_code: 200
--- response_body_like chomp
"message":\{"role":"assistant","content":"Hello! The llama "\},"logprobs":null,"finish_reason":"stop"



=== TEST 7: streamed, a stop string across three tokens
--- request
POST /v1/chat/completions
{"messages": [{"role": "user", "content": "hi"}], "stop": "世界, t", "stream": true}
--- error_code: 200
--- response_body_like eval
my $s = join('', map { "$main::head\"delta\":\\{\"content\":\"\Q$_\E\"\\},\"logprobs\":null,\"finish_reason\":null\\}\\]\\}\\n\\n" } @main::pieces[0 .. 8]);
qr/^${main::head}"delta":\{"role":"assistant","content":""\}[^\n]*\n\n$s${main::head}"delta":\{\},"logprobs":null,"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n$/



=== TEST 8: completions: a byte-level prompt counted as HF counts it (no BOS)
--- request
POST /v1/completions
{"prompt": "Hello 🦙 世界, don't I'M 12345", "max_tokens": 2}
--- error_code: 200
--- response_body_like eval
qr/"text":"Hello!","index":0,"logprobs":null,"finish_reason":"length"\}\],"usage":\{"prompt_tokens":$main::n_text,"completion_tokens":2,/



=== TEST 9: completions stream: the bytes of 🦙 wait for the token that completes it
--- request
POST /v1/completions
{"prompt": "x", "max_tokens": 7, "stream": true}
--- error_code: 200
--- response_body_like eval
my $l = $main::pieces[5];
qr/"text":" llama",[^\n]*\n\ndata: [^\n]*"text":" ",[^\n]*\n\ndata: [^\n]*"text":"",[^\n]*\n\ndata: [^\n]*"text":"\Q$l\E","index":0,"logprobs":null,"finish_reason":null\}\]\}\n\ndata: [^\n]*"text":"","index":0,"logprobs":null,"finish_reason":"length"/



=== TEST 10: completions with a stop string, on a character boundary
--- request
POST /v1/completions
{"prompt": "x", "max_tokens": 30, "stop": ["好世"]}
--- error_code: 200
--- response_body_like eval
my $t = "Hello! The llama \x{1f999} says \x{4f60}"; utf8::encode($t);
qr/"text":"\Q$t\E","index":0,"logprobs":null,"finish_reason":"stop"/

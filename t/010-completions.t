# /v1/completions on the real stories260K model: greedy text is the
# model's known story, usage is exact, token-id prompts work, and the same
# seed gives the same sampled text.
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

=== TEST 1: greedy decoding from BOS alone tells the known story
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":32,"temperature":0}
--- error_code: 200
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"id":"cmpl-[0-9a-f]{24}","object":"text_completion","created":\d+,"model":"stories260K","choices":\[\{"text":"Once upon a time, there was a little girl named Lily\. She loved to play outside in the park\.[^"]*","index":0,"logprobs":null,"finish_reason":"length"\}\],"usage":\{"prompt_tokens":1,"completion_tokens":32,"total_tokens":33\}\}$



=== TEST 2: a text prompt is continued (BOS added, usage counts it)
--- request
POST /v1/completions
{"model":"stories260K","prompt":"Once upon a time","max_tokens":12,"temperature":0}
--- error_code: 200
--- response_body_like chomp
"choices":\[\{"text":", there was a little girl named Lily\.[^"]*","index":0,"logprobs":null,"finish_reason":"length"\}\],"usage":\{"prompt_tokens":5,"completion_tokens":12,"total_tokens":17\}\}$



=== TEST 3: the same prompt as token ids gives the same text
--- request
POST /v1/completions
{"prompt":[1,403,407,261,378],"max_tokens":12,"temperature":0}
--- error_code: 200
--- response_body_like chomp
"text":", there was a little girl named Lily\.[^"]*".*"prompt_tokens":5,"completion_tokens":12



=== TEST 4: generation stops at the end-of-sequence token
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":400,"temperature":0}
--- error_code: 200
--- response_body_like chomp
"finish_reason":"stop"\}\],"usage":\{"prompt_tokens":1,"completion_tokens":\d+,



=== TEST 5: max_tokens defaults to 16, as in OpenAI's API
--- request
POST /v1/completions
{"prompt":"Lily","temperature":0}
--- error_code: 200
--- response_body_like chomp
"finish_reason":"length"\}\],"usage":\{"prompt_tokens":\d+,"completion_tokens":16,



=== TEST 6: the same seed gives the same sampled text; another seed differs
--- init
my $req = sub {
    my ($seed) = @_;
    my (undef, undef, $b) = NgxGpuTest::http_request('POST',
        '/v1/completions', '{"prompt":"The dog","max_tokens":32,'
        . '"temperature":1.0,"top_p":0.95,"seed":' . $seed . '}');
    return $b =~ /"text":"([^"]*)"/ ? $1 : "no text in: $b";
};
my ($a1, $a2, $b1) = ($req->(42), $req->(42), $req->(7));
Test::More::is($a2, $a1, "seed 42 twice: same text");
Test::More::isnt($b1, $a1, "seed 7: other text");
--- request
POST /v1/completions
{"prompt":"The dog","max_tokens":4,"temperature":0.8,"seed":1}
--- error_code: 200



=== TEST 7: GET /v1/models lists the served model
--- request
GET /v1/models
--- error_code: 200
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"stories260K","object":"model","created":\d+,"owned_by":"ngx-gpu"\}\]\}$

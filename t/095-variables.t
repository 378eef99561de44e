# The module's variables: $gpu_model, $gpu_request_id, $gpu_prompt_tokens,
# $gpu_completion_tokens, $gpu_finish_reason and $gpu_ttft, in add_header
# (known by the header of a plain answer) and in an access log (known for
# streams and cut streams too); "-" where there is nothing to say.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;
use JSON::PP ();

start_backend(args => ['--device', 'cpu', '--step-delay-us', '3000']);

our $log = "$ENV{TEST_NGINX_SERVER_ROOT}/logs/gpu-vars.log";

# the access log's lines: { field => value } in log_format order
sub log_lines {
    open my $f, '<', $log or return ();
    my @l;
    while (<$f>) {
        chomp;
        my %h;
        @h{qw(status model id prompt completion finish ttft rt)} = split / /;
        push @l, \%h;
    }
    return @l;
}

add_block_preprocessor {
    my $block = shift;
    gpu_block_defaults($block, <<'CONF');
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
    access_log $TEST_NGINX_SERVER_ROOT/logs/gpu-vars.log gpu;
    add_header X-Model $gpu_model;
    add_header X-Id $gpu_request_id;
    add_header X-Tokens "$gpu_prompt_tokens $gpu_completion_tokens";
    add_header X-Finish $gpu_finish_reason;
    add_header X-TTFT $gpu_ttft;
}
CONF
    $block->set_value('http_config', <<'CONF') unless defined $block->http_config;
log_format gpu '$status $gpu_model $gpu_request_id $gpu_prompt_tokens '
               '$gpu_completion_tokens $gpu_finish_reason $gpu_ttft '
               '$request_time';
CONF
};

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a plain completion: the variables in its headers
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":5,"temperature":0}
--- error_code: 200
--- response_headers_like
X-Model: stories260K
X-Id: cmpl-[0-9a-f]+
X-Tokens: 1 5
X-Finish: length
X-TTFT: \d+\.\d{3}
--- response_body_like chomp
"usage":\{"prompt_tokens":1,"completion_tokens":5,"total_tokens":6\}



=== TEST 2: an answer ended by a stop string
--- request
POST /v1/completions
{"prompt":"Once upon a time","max_tokens":30,"temperature":0,"stop":["little"]}
--- error_code: 200
--- response_headers_like
X-Finish: stop
X-Tokens: \d+ \d+
--- response_body_like chomp
"finish_reason":"stop"



=== TEST 3: a refused request never reached the backend: "-"
--- request
POST /v1/completions
{"prompt":"x","max_tokens":-1}
--- error_code: 400
--- response_headers
X-Model:
X-Tokens:
X-Finish:



=== TEST 4: the access log agrees with each answer's usage and id, for plain answers, streams and a stream cut short
--- init
my $before = () = main::log_lines();
my ($st, undef, $body) = NgxGpuTest::http_request('POST', '/v1/completions',
    '{"prompt":"Once upon a time","max_tokens":12,"temperature":0}');
my $plain = JSON::PP::decode_json($body);
my ($sst, undef, $sbody) = NgxGpuTest::http_request('POST',
    '/v1/completions', '{"prompt":[1],"max_tokens":9,"temperature":0,'
    . '"stream":true,"stream_options":{"include_usage":true}}');
my ($usage) = $sbody =~ /"usage":(\{[^}]*\})/;
$usage = JSON::PP::decode_json($usage);
my ($sid) = $sbody =~ /"id":"([^"]+)"/;
NgxGpuTest::http_abort('POST', '/v1/completions',
    '{"prompt":[1],"max_tokens":300,"temperature":0,"stream":true}', 0.3);
Time::HiRes::sleep(0.3);
my @l = main::log_lines();
splice @l, 0, $before;
Test::More::is(scalar @l, 3, 'three lines') or Test::More::diag(`cat $main::log`);
Test::More::is_deeply([@{$l[0]}{qw(status model id prompt completion finish)}],
    [200, 'stories260K', $plain->{id}, $plain->{usage}{prompt_tokens},
     $plain->{usage}{completion_tokens}, 'length'], 'plain: as its usage');
Test::More::ok($l[0]{ttft} =~ /^\d+\.\d{3}$/ && $l[0]{ttft} <= $l[0]{rt},
               "plain: ttft $l[0]{ttft} s within request_time $l[0]{rt} s");
Test::More::is_deeply([@{$l[1]}{qw(status id prompt completion finish)}],
    [200, $sid, $usage->{prompt_tokens}, $usage->{completion_tokens},
     'length'], 'stream: as its usage chunk');
Test::More::is($l[2]{status}, 200, 'cut stream: 200, as its header said');
Test::More::ok($l[2]{completion} > 0 && $l[2]{completion} < 300,
               "cut stream: the $l[2]{completion} tokens sent");
Test::More::is($l[2]{finish}, '-', 'cut stream: no finish reason');
--- request
GET /v1/models
--- error_code: 200

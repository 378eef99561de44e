# scripts/fuzz-api against the build under test: 1000 generated requests
# from a fixed seed, good and bad (wrong types, huge and odd numbers,
# invalid UTF-8, lone surrogates, deep nesting, duplicate keys, garbage,
# truncation, bodies over nginx's and the module's limits, malformed and
# chunked HTTP, clients that hang up), to both endpoints, streamed and
# not, on stories260K (chat with ChatML) and, with ../shared, the
# byte-level scripted model; and after every 250 cases a burst of 48
# valid requests at once to each target, three times the backends' 16
# slots.  Every answer must be a well-formed 200 or an OpenAI-style JSON
# error (a refused burst request: 429 with Retry-After), in time;
# afterwards the server must be healthy,
# with no slot or KV block left in use, no crash, alert or sanitizer
# report in the error log, and the same backend processes serving.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;

our $SEED = $ENV{TEST_NGINX_FUZZ_SEED} // 270;
our $CASES = $ENV{TEST_NGINX_FUZZ_CASES} // 1000;

start_backend(args => ['--device', 'cpu', '--chat-template', 'chatml',
                        '--slots', 16]);

# the byte-level model when its tokenizer and oracles are there
our @targets = ('/v1/', '/c/v1/');
my $qwen = ($ENV{NGX_GPU_SHARED} // '../shared')
           . '/models/qwen3-tokenizer/tokenizer.json';
if (-f $qwen && -x 'build/venv/bin/python'
    && system("build/venv/bin/python -c 'import tokenizers, jinja2' "
              . "2>/dev/null") == 0)
{
    require NgxGpuScripted;
    start_backend(name => 'b',
                  model => NgxGpuScripted::scripted_model_or_skip(),
                  args => ['--device', 'cpu', '--slots', 16]);
    push @targets, '/b/v1/';
} else {
    Test::More::diag("../shared absent: stories260K only");
    $ENV{TEST_NGINX_GPU_SOCKET_B} = $ENV{TEST_NGINX_GPU_SOCKET};
}

our %pids = map { $_ => backend_server_pid($_) } '', (@targets > 2 ? 'b' : ());


# runs in the block's init, once nginx is up: the fuzzer's verdict, the
# backends' pids and logs
sub run_fuzz {
    my $port = $ENV{TEST_NGINX_SERVER_PORT} // $ENV{TEST_NGINX_PORT} // 1984;
    my @cmd = ('scripts/fuzz-api', '--port', $port, '--seed', $SEED,
               '--cases', $CASES, '--jobs', 4, '--check-every', 250,
               '--burst', 48,
               '--body-timeout', 2, '--timeout', 30,
               '--error-log', $Test::Nginx::Util::ErrLogFile,
               map { ('--target', $_) } @targets);
    my $out = qx{@cmd 2>&1};
    my $rc = $? >> 8;
    my ($n) = $out =~ /^fuzz-api: (\d+) violations$/m;
    my ($cases) = $out =~ /^fuzz-api: seed \S+, (\d+) cases/m;
    Test::More::ok(defined $cases && $cases == $CASES,
                   "fuzz-api ran all $CASES cases (seed $SEED)")
        or Test::More::diag($out);
    Test::More::ok($rc == 0 && defined $n && $n == 0,
                   "fuzz-api: no violation (seed $SEED)")
        or Test::More::diag($out);
    Test::More::like($out, qr/^fuzz-api: bursts of 48: \S/m,
                     "fuzz-api sent its bursts");
    Test::More::note($out);

    for my $name (sort keys %pids) {
        my $log = backend_log($name);
        Test::More::is(backend_server_pid($name), $pids{$name},
                       "backend '$name' still the same process");
        Test::More::unlike($log,
                           qr/killed by signal|exited with status|Sanitizer/,
                           "backend '$name' log clean");
    }
}


add_block_preprocessor { gpu_block_defaults($_[0]) };

no_shuffle();
run_tests();

__DATA__

=== TEST 1: generated requests, every answer as the API promises; healthy afterwards
--- http_config
client_body_timeout 2s;
client_header_timeout 2s;
--- config
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
    gpu_max_body_size 64k;
}
location /c/v1/ {
    # nginx's own limit first: its 413 must be JSON too
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
    client_max_body_size 8k;
}
location /b/v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET_B;
}
location = /health {
    gpu_health;
}
location = /metrics {
    gpu_metrics;
}
--- init
main::run_fuzz();
--- request
GET /health
--- response_body_like: ^\{"status":"ok","backend":"connected",
--- no_error_log
exited on signal
[alert]
[crit]
[emerg]
Sanitizer
runtime error



=== TEST 2: a plain completion still succeeds
--- request
POST /v1/completions
{"prompt": [1], "max_tokens": 5, "temperature": 0}
--- response_body_like: "text":"Once upon a time,"

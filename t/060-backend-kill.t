# The backend's server process is SIGKILLed under load: every request in
# flight is answered within a second (503, or a stream that ends with an
# error event and no [DONE]); the supervisor starts a new server; nginx
# workers reconnect by themselves and later requests succeed.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;

# 4 ms per step: a 400-token request takes over 1.5 s
start_backend(args => ['--device', 'cpu', '--step-delay-us', '4000']);

master_on();
workers(2);

add_block_preprocessor { gpu_block_defaults($_[0], <<'CONF') };
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
location = /metrics {
    gpu_metrics;
}
CONF

no_shuffle();
run_tests();

__DATA__

=== TEST 1: a stream in flight ends with an error event, not [DONE]
--- init
# the kill lands 0.6 s into the request; the answer must come by 1.6 s
NgxGpuTest::kill_backend_in(0.6);
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":400,"temperature":0,"stream":true}
--- timeout: 1.6
--- error_code: 200
--- response_body_like chomp
^data: \{"id":"cmpl-[0-9a-f]{24}",.*"text":" upon".*\n\ndata: \{"error":\{"message":"[^"]+","type":"server_error","param":null,"code":"backend_terminated"\}\}\n\n$



=== TEST 2: the supervisor restarts the server; a request then succeeds
--- init
NgxGpuTest::wait_backend_restart($NgxGpuTest::last_killed, 10);
Time::HiRes::sleep(0.5);    # the workers' reconnect timer
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":8,"temperature":0}
--- error_code: 200
--- response_body_like chomp
"text":"Once upon a time, there was a"



=== TEST 3: every one of 8 concurrent requests in flight is answered within 1 s of the kill
--- init
my $t0 = Time::HiRes::time();
NgxGpuTest::kill_backend_in(0.8);
my @r = NgxGpuTest::http_concurrent(8, 'POST', '/v1/completions',
    '{"prompt":[1],"max_tokens":400,"temperature":0}', timeout => 5);
my $late = grep { $_->[2] > 0.8 + 1.0 } @r;
my $n503 = grep { $_->[0] == 503
    && $_->[1] =~ /"type":"server_error"/ } @r;
Test::More::is($n503, 8, "8 in-flight requests got 503")
    or Test::More::diag(join "\n", map { "$_->[0] $_->[2]s $_->[1]" } @r);
Test::More::is($late, 0, "none answered later than 1 s after the kill");
NgxGpuTest::wait_backend_restart($NgxGpuTest::last_killed, 10);
Time::HiRes::sleep(0.5);
--- request
POST /v1/completions
{"prompt":[1],"max_tokens":8,"temperature":0}
--- error_code: 200
--- response_body_like chomp
"text":"Once upon a time, there was a"

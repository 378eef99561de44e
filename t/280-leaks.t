# No memory leaked per request, and no memory error, in the backend:
# gpu_backend (supervisor and server) runs under valgrind's memcheck
# while nginx sends it every kind of request (t/lib/NgxGpuLeaks.pm's
# mix: completions and chat, streamed or not, stop strings, logprobs,
# penalties, top_k/top_p/seed, token prompts, the 400s the backend
# decides, clients hanging up), alone and many at once; then it is
# stopped with SIGTERM and must exit 0 with valgrind reporting no error
# and no byte definitely or indirectly lost.  Memory still reachable at
# exit would not fail this (the backend frees everything anyway).
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use File::Temp ();
use NgxGpuTest;
use NgxGpuLeaks;

model_dir_or_skip();
valgrind_or_skip();

our $vgdir = File::Temp::tempdir('ngx-gpu-vg-XXXXXX', TMPDIR => 1,
                                 CLEANUP => !$ENV{TEST_NGINX_NO_CLEAN});
our $vglog = "$vgdir/vg";
our $t0 = Time::HiRes::time();

start_backend(bin => cpu_only_backend(), wrap => valgrind_args($vglog),
              start_timeout => 120,
              args => ['--device', 'cpu', '--chat-template', 'chatml',
                       '--logprobs-tokens', '64', '--max-logprobs', '10']);

log_level('warn');

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

=== TEST 1: every request of the mix once, in turn: each answered as expected
--- init
for my $m (NgxGpuLeaks::leak_mix()) {
    Test::More::is(NgxGpuLeaks::mix_request($m, NgxGpuLeaks::test_port()),
                   '', $m->{name});
}
Test::More::is(NgxGpuLeaks::idle_metrics_ok(NgxGpuLeaks::test_port(),
                                            'stories260K', 60),
               '', 'idle afterwards: nothing running, queued or held');
--- request
GET /metrics
--- response_body_like chomp
(?=.*\nngx_gpu_requests_total\{code="499"\} 2\n)(?=.*\nngx_gpu_requests_total\{code="400"\} 6\n)(?=.*\nngx_gpu_requests_total\{code="200"\} 8\n)



=== TEST 2: 8 clients at once, 16 requests each: every answer as expected, the batch grew and shrank
--- init
my $r = NgxGpuLeaks::run_clients(NgxGpuLeaks::test_port(), 8, 16);
Test::More::is($r->{ok}, $r->{sent}, "all $r->{sent} answered as expected")
    or Test::More::diag(join "\n", @{ $r->{bad} });
my $m = NgxGpuLeaks::metrics(NgxGpuLeaks::test_port());
my $l = '{model="stories260K"';
Test::More::is($m->{'ngx_gpu_requests_total{code="499"}'}, $r->{aborts},
               "the $r->{aborts} hang-ups were cancelled (499)");
Test::More::cmp_ok($m->{"ngx_gpu_batch_size_bucket$l,le=\"1\"}"}, '<',
                   $m->{"ngx_gpu_batch_size_count$l}"},
                   'some steps ran more than one sequence');
Test::More::is(NgxGpuLeaks::idle_metrics_ok(NgxGpuLeaks::test_port(),
                                            'stories260K', 60),
               '', 'idle afterwards: nothing running, queued or held');
--- request
GET /metrics
--- response_body_like chomp
\nngx_gpu_kv_cache_usage_ratio\{model="stories260K"\} 0\n



=== TEST 3: SIGTERM: the backend exits 0; memcheck found no error and nothing definitely or indirectly lost
--- init
my $status = NgxGpuTest::stop_backend('', 120);
Test::More::is($status, 0, 'the backend exited 0 on SIGTERM');
my $s = NgxGpuLeaks::valgrind_summaries($main::vglog);
my $server = NgxGpuTest::backend_server_pid();
Test::More::ok($s->{$server}, "a valgrind log of the server ($server)")
    or Test::More::diag(NgxGpuTest::backend_log());
Test::More::cmp_ok(scalar(keys %$s), '==', 2,
                   'valgrind logs of the supervisor and the server');
for my $pid (sort keys %$s) {
    my $v = $s->{$pid};
    my $who = $pid == ($server // 0) ? 'server' : 'supervisor';
    NgxGpuLeaks::memcheck_clean_ok($v, $who);
}
Test::More::diag(sprintf "backend under valgrind: %.0f s",
                 Time::HiRes::time() - $main::t0);
--- request
GET /metrics
--- response_body_like chomp
\nngx_gpu_backend_up\{model="stories260K"\} 0\n

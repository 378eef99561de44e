# No memory error and no memory leaked in nginx with the module: an
# nginx (one process, master_process off) runs under valgrind's memcheck
# while clients send it t/lib/NgxGpuLeaks.pm's mix (completions and chat,
# streamed or not, stop strings, logprobs, penalties, the 400s the module
# and the backend decide, clients hanging up), alone and many at once;
# then it is stopped with SIGQUIT and must exit 0 with valgrind
# reporting no error and no byte definitely or indirectly lost, but for
# nginx's own copy of its environment (t/valgrind/nginx.supp).  The
# backend runs at full speed (t/280-leaks.t checks it under valgrind).
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use File::Temp ();
use NgxGpuTest;
use NgxGpuLeaks;

model_dir_or_skip();
valgrind_or_skip();

our $vgdir = File::Temp::tempdir('ngx-gpu-vgn-XXXXXX', TMPDIR => 1,
                                 CLEANUP => !$ENV{TEST_NGINX_NO_CLEAN});
our $vglog = "$vgdir/vg";
our $t0 = Time::HiRes::time();

start_backend(args => ['--chat-template', 'chatml', '--logprobs-tokens',
                       '64', '--max-logprobs', '10']);
our $vport = start_gpu_nginx(wrap => valgrind_args($vglog,
                                                  't/valgrind/nginx.supp'),
                             start_timeout => 60,
                             conf => 'location = /metrics { gpu_metrics; }');

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

=== TEST 1: every request of the mix once, in turn, through nginx under valgrind: each answered as expected
--- init
for my $m (NgxGpuLeaks::leak_mix()) {
    Test::More::is(NgxGpuLeaks::mix_request($m, $main::vport), '',
                   $m->{name});
}
Test::More::is(NgxGpuLeaks::idle_metrics_ok($main::vport, 'stories260K',
                                            60),
               '', 'idle afterwards: nothing running, queued or held');
--- request
GET /metrics
--- response_body_like chomp
\nngx_gpu_backend_up\{model="stories260K"\} 1\n



=== TEST 2: 4 clients at once, 8 requests each, through nginx under valgrind: every answer as expected
--- init
my $r = NgxGpuLeaks::run_clients($main::vport, 4, 8);
Test::More::is($r->{ok}, $r->{sent}, "all $r->{sent} answered as expected")
    or Test::More::diag(join "\n", @{ $r->{bad} });
Test::More::is(NgxGpuLeaks::idle_metrics_ok($main::vport, 'stories260K',
                                            60),
               '', 'idle afterwards: nothing running, queued or held');
--- request
GET /metrics
--- response_body_like chomp
\nngx_gpu_kv_cache_usage_ratio\{model="stories260K"\} 0\n



=== TEST 3: SIGQUIT: nginx exits 0; memcheck found no error and nothing definitely or indirectly lost
--- init
my $status = NgxGpuTest::stop_gpu_nginx($main::vport, 'QUIT', 60);
Test::More::is($status, 0, 'nginx exited 0 on SIGQUIT');
my $s = NgxGpuLeaks::valgrind_summaries($main::vglog);
Test::More::cmp_ok(scalar(keys %$s), '==', 1, 'one valgrind log: nginx');
for my $pid (sort keys %$s) {
    my $v = $s->{$pid};
    NgxGpuLeaks::memcheck_clean_ok($v, 'nginx');
}
Test::More::diag(sprintf "nginx under valgrind: %.0f s",
                 Time::HiRes::time() - $main::t0);
--- request
GET /metrics
--- response_body_like chomp
\nngx_gpu_backend_up\{model="stories260K"\} 1\n

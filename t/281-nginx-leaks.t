# No memory error and no memory leaked in nginx with the module: an
# nginx (one process, master_process off) runs under valgrind's memcheck
# while clients send it t/lib/NgxGpuLeaks.pm's mix (completions and chat,
# streamed or not, stop strings, logprobs, penalties, the 400s the module
# and the backend decide, clients hanging up), alone and many at once;
# then it is stopped with SIGQUIT and must exit 0 with valgrind
# reporting no error and no byte definitely or indirectly lost, but for
# nginx's own copy of its environment (t/valgrind/nginx.supp).  The
# backend runs at full speed (t/280-leaks.t checks it under valgrind).
# The same nginx balances with gpu_adaptive too: location /lb/ proxies to
# an upstream of a second nginx (a node at full speed, reporting its
# X-GPU-Load) and a port nothing listens on (every try there fails, and
# the next goes to the node), with keepalive; the mix and the clients run
# through it as well, and its status is read in JSON and Prometheus text.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use File::Temp ();
use JSON::PP ();
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
our $node = start_gpu_nginx(conf => 'location = /metrics { gpu_metrics; }');
our $dead = NgxGpuTest::free_port();
our $vport = start_gpu_nginx(wrap => valgrind_args($vglog,
                                                  't/valgrind/nginx.supp'),
                             start_timeout => 60,
                             http_conf => <<"HTTP",
upstream gpus {
    gpu_adaptive zone=gpus:1m interval=200ms;
    server 127.0.0.1:$node;
    server 127.0.0.1:$dead;
    keepalive 4;
}
HTTP
                             conf => <<'CONF');
location = /metrics { gpu_metrics; }
location /lb/ {
    proxy_pass http://gpus/;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_read_timeout 120s;
}
location = /lb-status { gpu_upstream_status; }
CONF

# the mix with its paths under /lb/: through the balancer
our @lb_mix = map { +{ %$_, path => "/lb$_->{path}",
                       name => "balanced: $_->{name}" } }
              NgxGpuLeaks::leak_mix();

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



=== TEST 3: through gpu_adaptive under valgrind (a node and a dead port): the mix once, then 4 clients at once; its status in JSON and Prometheus text
--- init
for my $m (@main::lb_mix) {
    Test::More::is(NgxGpuLeaks::mix_request($m, $main::vport), '',
                   $m->{name});
}
my $r = NgxGpuLeaks::run_clients($main::vport, 4, 8, @main::lb_mix);
Test::More::is($r->{ok}, $r->{sent}, "balanced: all $r->{sent} answered "
               . "as expected")
    or Test::More::diag(join "\n", @{ $r->{bad} });
my ($st, undef, $body) = NgxGpuTest::http_request('GET', '/lb-status', '',
                                                  port => $main::vport);
my %peer = $st == 200
           ? map { $_->{server} => $_ }
                 @{ JSON::PP::decode_json($body)->{upstreams}{gpus}{peers} }
           : ();
my ($n, $d) = map { $peer{"127.0.0.1:$_"} } $main::node, $main::dead;
Test::More::ok($n && $d && $d->{fails} > 0 && $n->{requests} > 0
               && $n->{reported}{running} =~ /^\d+$/,
               'status (JSON): the dead port failed, the node answered '
               . 'and reported its load')
    or Test::More::diag("$st $body");
($st, undef, $body) = NgxGpuTest::http_request('GET',
                          '/lb-status?format=prometheus', '',
                          port => $main::vport);
my $dead_fails = 'ngx_gpu_upstream_peer_fails_total'
                 . qq(\\{upstream="gpus",peer="127\\.0\\.0\\.1:$main::dead"\\});
Test::More::like($st == 200 ? $body : "$st $body",
                 qr/^$dead_fails [1-9]/m,
                 'status in Prometheus text: the dead port\'s failures');
Test::More::is(NgxGpuLeaks::idle_metrics_ok($main::node, 'stories260K',
                                            60),
               '', 'the node idle afterwards');
--- request
GET /metrics
--- response_body_like chomp
\nngx_gpu_backend_up\{model="stories260K"\} 1\n



=== TEST 4: SIGQUIT: nginx exits 0; memcheck found no error and nothing definitely or indirectly lost
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

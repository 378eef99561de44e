# Flat memory under load: after a warm-up, thousands more requests of
# the leak mix (t/lib/NgxGpuLeaks.pm: every per-request path; plus the
# byte-level scripted model's requests when ../shared and build/venv are
# there) must not grow the private resident memory (RssAnon) of the
# backends' processes or of the nginx master and workers, nor leave a
# descriptor open, a channel slot or KV-cache block held, or a process
# restarted.  Memory is read once idle after the first third of the
# requests (the warm-up: buffers, caches and the KV pages the mix
# touches are in place by then) and again after the rest: a leak of
# 100 bytes a request is ~400 kB over the 4000 (at least 130 kB in each
# process that serves a share), the threshold is 64 kB.
# NGX_GPU_GROWTH_REQUESTS sets the number of requests (6000).
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;
use NgxGpuLeaks;

model_dir_or_skip();

my @args = ('--device', 'cpu');
start_backend(args => [@args, '--chat-template', 'chatml',
                       '--logprobs-tokens', '64', '--max-logprobs', '10']);

# the byte-level model, when its tokenizer and oracles are here
our @qmix;
my $qwen = ($ENV{NGX_GPU_SHARED} // '../shared')
           . '/models/qwen3-tokenizer/tokenizer.json';
my $py = 'build/venv/bin/python';
my $q_loc = '';
if (-f $qwen && -x $py
    && system("$py -c 'import tokenizers, jinja2' 2>/dev/null") == 0)
{
    require NgxGpuScripted;
    my $dir = NgxGpuScripted::scripted_model_or_skip();
    my $text = NgxGpuScripted::scripted_text();
    utf8::encode($text);
    start_backend(name => 'q', model => $dir, args => \@args);
    @qmix = bytelevel_mix('/q', $text);
    $q_loc = "location /q/v1/ {\n    gpu_pass unix:\$TEST_NGINX_GPU_SOCKET_Q;"
             . "\n}\n";
} else {
    Test::More::diag('no byte-level model (../shared/models/qwen3-tokenizer '
        . 'and build/venv with tokenizers and jinja2): stories260K only');
}

our $N = $ENV{NGX_GPU_GROWTH_REQUESTS} // 6000;
our $LIMIT_KB = 64;

master_on();
workers(2);
log_level('warn');

add_block_preprocessor { gpu_block_defaults($_[0], <<"CONF") };
location /v1/ {
    gpu_pass unix:\$TEST_NGINX_GPU_SOCKET;
}
${q_loc}location = /metrics {
    gpu_metrics;
}
CONF

# every process that serves: name => pid
sub processes {
    my %p;
    for my $b (['', 'backend'], ['q', 'byte-level backend']) {
        next if $b->[0] eq 'q' && !@qmix;
        my $srv = NgxGpuTest::backend_server_pid($b->[0]) or next;
        $p{"$b->[1] server"} = $srv;
        $p{"$b->[1] supervisor"} = NgxGpuLeaks::proc_ppid($srv);
    }
    my ($master, @workers) = NgxGpuLeaks::nginx_pids(
        Test::Nginx::Util::server_root() . '/logs/nginx.pid');
    $p{'nginx master'} = $master;
    $p{"nginx worker $_"} = $workers[$_] for 0 .. $#workers;
    return \%p;
}

# idle on every backend, then { name => [pid, RssAnon kB, fds] }
sub checkpoint {
    my ($port) = @_;
    for my $model ('stories260K', @qmix ? 'scripted-qwen3' : ()) {
        my $why = NgxGpuLeaks::idle_metrics_ok($port, $model, 30);
        Test::More::is($why, '', "$model idle: nothing running, queued or "
                                 . "held");
    }
    my $p = processes();
    return { map { $_ => [$p->{$_}, NgxGpuLeaks::proc_rss_anon($p->{$_}),
                          NgxGpuLeaks::proc_fds($p->{$_})] } keys %$p };
}

sub load {
    my ($port, $n) = @_;
    my $clients = 8;
    my $r = NgxGpuLeaks::run_clients($port, $clients,
                                     int($n / $clients + 0.5),
                                     NgxGpuLeaks::leak_mix(), @qmix);
    Test::More::is($r->{ok}, $r->{sent},
                   "all $r->{sent} answered as expected")
        or Test::More::diag(join "\n", @{ $r->{bad} });
    return $r;
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: after a warm-up of a third of the requests, the rest grow no process's memory or descriptors and leave nothing held
--- init
my $port = NgxGpuLeaks::test_port();
my $t0 = Time::HiRes::time();
my $w = main::load($port, $main::N / 3);
my $a = main::checkpoint($port);
my $t1 = Time::HiRes::time();
my $r = main::load($port, $main::N * 2 / 3);
my $t2 = Time::HiRes::time();
my $b = main::checkpoint($port);
my $cancelled = NgxGpuLeaks::metrics($port)
                ->{'ngx_gpu_requests_total{code="499"}'};
# t/280 counts them exactly; at full speed on a busy machine a worker may
# now and then not run before a long answer is all generated
Test::More::cmp_ok($cancelled, '>=',
                   0.95 * ($w->{long_aborts} + $r->{long_aborts}),
                   'hang-ups from long answers were cancelled (499)');
Test::More::cmp_ok($cancelled, '<=', $w->{aborts} + $r->{aborts},
                   'no more 499s than hang-ups');
my @rows;
for my $name (sort keys %$a) {
    my ($pa, $ra, $fa) = @{ $a->{$name} };
    my ($pb, $rb, $fb) = @{ $b->{$name} // [0, 0, 0] };
    Test::More::is($pb, $pa, "$name: the same process (pid $pa)");
    Test::More::cmp_ok($rb - $ra, '<=', $main::LIMIT_KB,
                       "$name: RssAnon $ra kB -> $rb kB");
    # a connection nginx is still closing: give it a moment
    for (1 .. 50) {
        last if $fb <= $fa;
        Time::HiRes::sleep(0.1);
        $fb = NgxGpuLeaks::proc_fds($pb);
    }
    Test::More::cmp_ok($fb, '<=', $fa, "$name: open descriptors $fa -> $fb");
    push @rows, sprintf("%-30s %8d kB -> %8d kB  fds %d -> %d", $name,
                        $ra, $rb, $fa, $fb);
}
Test::More::diag(sprintf("%d requests warm-up in %.1f s, %d measured in "
                         . "%.1f s (%.0f/s)", $main::N / 3, $t1 - $t0,
                         $r->{sent}, $t2 - $t1, $r->{sent} / ($t2 - $t1)));
Test::More::diag($_) for @rows;
--- request
GET /metrics
--- response_body_like chomp
(?=.*\nngx_gpu_num_requests_running\{model="stories260K"\} 0\n)(?=.*\nngx_gpu_num_requests_waiting\{model="stories260K"\} 0\n)(?=.*\nngx_gpu_kv_cache_usage_ratio\{model="stories260K"\} 0\n)(?=.*\nngx_gpu_channel_slots_in_use\{model="stories260K"\} 0\n)(?=.*\nngx_gpu_requests_total\{code="499"\} \d+\n)

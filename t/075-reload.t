# nginx -s reload while streams are running: the old workers finish every
# stream they hold to its last token, the new workers connect to the
# backend and serve at once, and the backend gives no slot of an old
# worker away before it is done.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;
use Time::HiRes ();

# slow steps: a 150-token stream takes about a second
start_backend(args => ['--device', 'cpu', '--slots', '8',
                       '--step-delay-us', '6000']);

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

our $stream = '{"prompt":[1],"max_tokens":150,"temperature":0,'
              . '"stream":true}';

# the text of an SSE completion stream, and whether it ended properly
sub stream_text {
    my ($body) = @_;
    my ($text, $n) = ('', 0);
    for my $ev ($body =~ /^data: (\{.*\})$/mg) {
        my $j = JSON::PP::decode_json($ev);
        for my $c (@{ $j->{choices} // [] }) {
            $text .= $c->{text} // '';
            $n++ if ($c->{text} // '') ne '';
        }
    }
    return ($text, $body =~ /\ndata: \[DONE\]\n/ ? 1 : 0);
}

sub master_pid {
    open my $f, '<', $Test::Nginx::Util::PidFile or return 0;
    my $p = <$f>;
    chomp $p;
    return $p;
}

sub worker_pids {
    my ($master) = @_;
    open my $f, '<', "/proc/$master/task/$master/children" or return ();
    return sort split ' ', <$f> // '';
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: three streams in flight across a reload all finish whole; a request after it is served by the new workers
--- init
use JSON::PP ();
my ($alone_st, $alone) = NgxGpuTest::http_finish(
    NgxGpuTest::http_start('POST', '/v1/completions', $main::stream));
my ($want, $want_done) = main::stream_text($alone);
Test::More::ok($want_done && length $want > 100,
               'a stream alone: ' . length($want) . ' chars, ends with [DONE]');
my $master = main::master_pid();
my @old = main::worker_pids($master);
my @c = map { NgxGpuTest::http_start('POST', '/v1/completions',
                                      $main::stream) } 1 .. 3;
Time::HiRes::sleep(0.4);
kill 'HUP', $master;
# new workers up while the old ones still stream
my @new;
for (1 .. 50) {
    Time::HiRes::sleep(0.1);
    @new = grep { my $o = $_; !grep { $_ == $o } @old }
           main::worker_pids($master);
    last if @new >= 2;
}
Test::More::is(scalar @new, 2, 'two new workers after the reload');
my ($st, undef, $body, $secs) = NgxGpuTest::http_request('POST',
    '/v1/completions', '{"prompt":[1],"max_tokens":5,"temperature":0}');
Test::More::is($st, 200, 'a request during the old workers\' streams: 200');
Test::More::like($body, qr/"text":"Once upon a time,"/, 'and its text');
for my $i (0 .. 2) {
    my ($cst, $cbody) = NgxGpuTest::http_finish($c[$i]);
    my ($text, $done) = main::stream_text($cbody);
    Test::More::is($cst, 200, "stream $i: 200");
    Test::More::ok($done, "stream $i ends with [DONE]");
    Test::More::is($text, $want, "stream $i: every token, as without a reload");
    Test::More::like($cbody, qr/"finish_reason":"length"/,
                     "stream $i: finish_reason length");
}
# the old workers exit once their streams are done
my $gone = 0;
for (1 .. 50) {
    $gone = !grep { kill 0, $_ } @old;
    last if $gone;
    Time::HiRes::sleep(0.1);
}
Test::More::ok($gone, 'the old workers exited');
my $log = NgxGpuTest::backend_log();
Test::More::unlike($log, qr/left \d+ request slot/,
                   'the backend cancelled no slot of an old worker')
    or Test::More::diag(join "\n", grep { /cancel/i } split /\n/, $log);
--- request
GET /metrics
--- error_code: 200
--- response_body_like chomp
(?=.*\nngx_gpu_num_requests_running\{model="stories260K"\} 0\n)(?=.*\nngx_gpu_kv_cache_usage_ratio\{model="stories260K"\} 0\n)
--- no_error_log
[alert]
[crit]
[emerg]

package NgxGpuLeaks;

# NgxGpuLeaks - what the memory suites (t/280-leaks.t under valgrind,
# t/285-memory-growth.t at full speed) share: one mix of requests that
# takes every per-request path of the module and the backend, clients
# that send it many times at once and check every answer, and readers of
# /metrics, /proc and valgrind's logs.
#
# The mix runs on stories260K with --chat-template chatml,
# --logprobs-tokens 64 and --max-logprobs 10 (the limits some of its
# requests break on purpose).

use strict;
use warnings;

use Exporter 'import';
use File::Spec;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);

use NgxGpuTest qw(http_request);

our @EXPORT = qw(leak_mix bytelevel_mix mix_request run_clients test_port
                 metrics idle_metrics_ok proc_rss_anon proc_fds proc_ppid
                 nginx_pids valgrind_or_skip cpu_only_backend
                 valgrind_args valgrind_summaries valgrind_excerpt);

my $chat_user = '{"role":"user","content":"Tell me a story."}';
my $long_text = 'abc ' x 400;

# name, path, body, expected status, pattern the body must match, and
# for disconnects how: 'stream' (hang up after the first event) or
# 'early' (hang up right after sending)
my @MIX = (
    { name => 'completion, greedy, token prompt',
      path => '/v1/completions',
      body => '{"prompt":[1],"max_tokens":12,"temperature":0}',
      status => 200,
      like => qr/"text":"Once upon a time, there was a little girl","index":0,"logprobs":null,"finish_reason":"length"\}\],"usage":\{"prompt_tokens":1,"completion_tokens":12,/ },
    { name => 'completion, text prompt, top_k + top_p + seed',
      path => '/v1/completions',
      body => '{"prompt":"Once upon a time","max_tokens":16,'
              . '"temperature":0.8,"top_k":40,"top_p":0.9,"seed":7}',
      status => 200,
      like => qr/^\{"id":"cmpl-[0-9a-f]{24}","object":"text_completion",.*"finish_reason":"(length|stop)"\}\],"usage":\{"prompt_tokens":5,/ },
    { name => 'completion, streamed, stop string across tokens',
      path => '/v1/completions',
      body => '{"prompt":[1],"max_tokens":30,"temperature":0,'
              . '"stop":["little g"],"stream":true}',
      status => 200,
      like => qr/^data: [^\n]*"text":"Once",(?:(?!little).)*"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n\z/s },
    { name => 'completion, logprobs 3',
      path => '/v1/completions',
      body => '{"prompt":[1],"max_tokens":4,"temperature":0,"logprobs":3}',
      status => 200,
      like => qr/"logprobs":\{"tokens":\[" Once"," upon"," a"," time"\],"token_logprobs":\[[^\]]+\],"top_logprobs":\[\{" Once":[^}]+," One":/ },
    { name => 'completion, streamed, token prompt, penalties, logprobs',
      path => '/v1/completions',
      body => '{"prompt":[1,403,407],"max_tokens":8,"temperature":0.7,'
              . '"presence_penalty":1.5,"frequency_penalty":0.5,"seed":3,'
              . '"stream":true,"logprobs":2}',
      status => 200,
      like => qr/^data: [^\n]*"top_logprobs":\[\{.*"finish_reason":"(length|stop)"\}\]\}\n\ndata: \[DONE\]\n\n\z/s },
    { name => 'chat, system + user',
      path => '/v1/chat/completions',
      body => '{"messages":[{"role":"system","content":"You tell stories."},'
              . $chat_user . '],"max_tokens":10,"temperature":0}',
      status => 200,
      like => qr/^\{"id":"chatcmpl-[0-9a-f]{24}","object":"chat\.completion",.*"message":\{"role":"assistant","content":"\\"Here,\\" said the stor"\},"logprobs":null,"finish_reason":"length"\}\],"usage":\{"prompt_tokens":82,"completion_tokens":10,/ },
    { name => 'chat, streamed, top_logprobs, usage',
      path => '/v1/chat/completions',
      body => '{"messages":[' . $chat_user . '],"max_tokens":6,'
              . '"temperature":0,"stream":true,"logprobs":true,'
              . '"top_logprobs":2,"stop":"zzz",'
              . '"stream_options":{"include_usage":true}}',
      status => 200,
      like => qr/^data: [^\n]*"delta":\{"role":"assistant","content":""\}.*"top_logprobs":\[\{"token":"\\"".*"finish_reason":"length"\}\]\}\n\ndata: [^\n]*"usage":\{"prompt_tokens":49,"completion_tokens":6,"total_tokens":55\}\}\n\ndata: \[DONE\]\n\n\z/s },
    { name => 'chat, parts, streamed, stop string',
      path => '/v1/chat/completions',
      body => '{"messages":[{"role":"user","content":[{"type":"text",'
              . '"text":"Tell me"},{"type":"text","text":"a story."}]}],'
              . '"max_tokens":20,"temperature":0,"stop":["Lily"],'
              . '"stream":true}',
      status => 200,
      like => qr/^data: [^\n]*"delta":\{"role":"assistant","content":""\}(?:(?!Lily).)*"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n\z/s },
    { name => 'completion, text prompt too long for the context (backend)',
      path => '/v1/completions',
      body => '{"prompt":"' . $long_text . '","max_tokens":200}',
      status => 400,
      like => qr/^\{"error":\{"message":"This model's maximum context length is 512 tokens[^"]*","type":"invalid_request_error","param":"prompt","code":"context_length_exceeded"\}\}/ },
    { name => 'chat, prompt too long for the context (backend)',
      path => '/v1/chat/completions',
      body => '{"messages":[{"role":"user","content":"' . $long_text
              . '"}],"max_tokens":100,"stream":true}',
      status => 400,
      like => qr/"code":"context_length_exceeded"/ },
    { name => 'completion, logprobs over --logprobs-tokens',
      path => '/v1/completions',
      body => '{"prompt":"a","logprobs":1,"max_tokens":65}',
      status => 400,
      like => qr/^\{"error":\{"message":"[^"]*at most 64[^"]*","type":"invalid_request_error","param":"max_tokens",/ },
    { name => 'chat, top_logprobs over --max-logprobs',
      path => '/v1/chat/completions',
      body => '{"messages":[' . $chat_user . '],"logprobs":true,'
              . '"top_logprobs":11}',
      status => 400,
      like => qr/"param":"top_logprobs"/ },
    { name => 'malformed JSON',
      path => '/v1/completions',
      body => '{"prompt": [1, 2',
      status => 400,
      like => qr/^\{"error":\{"message":"[^"]+","type":"invalid_request_error",/ },
    { name => 'token id outside the vocabulary',
      path => '/v1/completions',
      body => '{"prompt":[1,512],"max_tokens":2}',
      status => 400,
      like => qr/"param":"prompt"/ },
    { name => 'client hangs up mid-stream',
      path => '/v1/completions',
      body => '{"prompt":[1],"max_tokens":400,"temperature":0,'
              . '"stream":true}',
      abort => 'stream' },
    { name => 'client hangs up before the answer',
      path => '/v1/chat/completions',
      body => '{"messages":[' . $chat_user . '],"max_tokens":400,'
              . '"temperature":0}',
      abort => 'early' },
);

sub leak_mix { return @MIX }


# The scripted byte-level model (t/lib/NgxGpuScripted.pm: the Qwen3
# tokenizer, always the same answer, in which a llama and a clef span
# three tokens each) behind location $prefix/v1/: the byte-level
# tokenizer, the Qwen3 template and holding back partial UTF-8 in
# streams.  $text: the answer, as UTF-8 bytes.
sub bytelevel_mix {
    my ($prefix, $text) = @_;
    my $user = '{"role":"user","content":"hi \u00e9\u4f60\ud83e\udd99"}';
    my $utf8 = sub { my $t = shift; utf8::encode($t); $t };
    return (
        { name => 'byte-level chat',
          path => "$prefix/v1/chat/completions",
          body => '{"messages":[' . $user . '],"max_tokens":40}',
          status => 200,
          like => qr/"message":\{"role":"assistant","content":"\Q$text\E"\},"logprobs":null,"finish_reason":"stop"/ },
        { name => 'byte-level chat, streamed: characters whole',
          path => "$prefix/v1/chat/completions",
          body => '{"messages":[' . $user . '],"max_tokens":40,'
                  . '"stream":true}',
          status => 200,
          like => qr/^(?!.*(?:\xef\xbf\xbd|\\ufffd))data: .*"content":"\xf0\x9f\xa6\x99".*"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n\z/s },
        { name => 'byte-level chat, stop string inside a character',
          path => "$prefix/v1/chat/completions",
          body => '{"messages":[' . $user . '],"stop":["'
                  . $utf8->("\x{1f999} says") . '"],"stream":true,'
                  . '"logprobs":true,"top_logprobs":2}',
          status => 200,
          like => qr/^(?!.*\xf0\x9f\xa6\x99)data: .*"top_logprobs":.*"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n\z/s },
        { name => 'byte-level completion, text prompt',
          path => "$prefix/v1/completions",
          body => '{"prompt":"' . $utf8->("Hello \x{1f999} \x{4e16}\x{754c},"
                  . " don't I'M 12345") . '","max_tokens":3,'
                  . '"logprobs":2}',
          status => 200,
          like => qr/^\{"id":"cmpl-[0-9a-f]{24}",.*"finish_reason":"length"\}\],"usage":\{"prompt_tokens":\d+,"completion_tokens":3,/ },
        { name => 'byte-level: client hangs up mid-stream',
          path => "$prefix/v1/chat/completions",
          body => '{"messages":[' . $user . '],"stream":true}',
          abort => 'stream', short => 1 },
    );
}


# the port of the suite's nginx, as NgxGpuTest::http_request picks it
sub test_port {
    return $ENV{TEST_NGINX_SERVER_PORT} // $ENV{TEST_NGINX_PORT} // 1984;
}


# one request of the mix; returns '' when it went as expected, else why
sub mix_request {
    my ($m, $port) = @_;

    if ($m->{abort}) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Proto => 'tcp',
                                      Timeout => 5)
            or return "connect: $!";
        print $s "POST $m->{path} HTTP/1.1\r\nHost: localhost\r\n"
            . "Content-Type: application/json\r\n"
            . "Content-Length: " . length($m->{body}) . "\r\n\r\n"
            . $m->{body};
        if ($m->{abort} eq 'early') {
            close $s;
            return '';
        }
        my ($got, $sel, $end) = ('', IO::Select->new($s), time + 60);
        while ($got !~ /\r\n\r\n.*data: /s && time < $end) {
            last unless $sel->can_read($end - time);
            my $n = sysread($s, my $buf, 65536);
            last unless $n;
            $got .= $buf;
        }
        close $s;
        return $got =~ m{^HTTP/1\.1 200 .*\r\n\r\n.*data: \{}s ? ''
             : "no event before the hang-up: " . substr($got, 0, 300);
    }

    my ($st, undef, $body) = http_request('POST', $m->{path}, $m->{body},
                                          port => $port, timeout => 120);
    return '' if $st == $m->{status} && $body =~ $m->{like};
    return "status $st, body " . substr($body, 0, 400);
}


# $clients processes at once, each sending $per requests of @mix (the
# stories260K mix by default; client c starts at entry c, so different
# kinds run side by side); returns { sent, ok, aborts, long_aborts, bad
# => [the first failures] }
sub run_clients {
    my ($port, $clients, $per, @mix) = @_;
    my @kids;

    @mix = @MIX unless @mix;

    for my $c (0 .. $clients - 1) {
        pipe(my $r, my $w) or die "pipe: $!";
        my $pid = fork() // die "fork: $!";
        if ($pid == 0) {
            close $r;
            $SIG{PIPE} = 'IGNORE';
            my ($ok, @bad) = (0);
            for my $i (0 .. $per - 1) {
                my $m = $mix[($c + $i) % @mix];
                my $why = mix_request($m, $port);
                if ($why eq '') {
                    $ok++;
                } elsif (@bad < 5) {
                    push @bad, "$m->{name}: $why";
                }
            }
            print $w join("\n", $ok, @bad), "\n";
            close $w;
            POSIX::_exit(0);
        }
        close $w;
        push @kids, [$pid, $r];
    }

    # hang-ups, and those of answers too long to be over before nginx
    # sees the hang-up (a short one may be sent whole first)
    my %res = (sent => $clients * $per, ok => 0, bad => [], aborts => 0,
               long_aborts => 0);
    for my $c (0 .. $clients - 1) {
        for my $m (map { $mix[($c + $_) % @mix] } 0 .. $per - 1) {
            next unless $m->{abort};
            $res{aborts}++;
            $res{long_aborts}++ unless $m->{short};
        }
    }
    for my $k (@kids) {
        my $fh = $k->[1];
        my ($ok, @bad) = map { chomp; $_ } <$fh>;
        close $fh;
        waitpid($k->[0], 0);
        $res{ok} += $ok // 0;
        push @{ $res{bad} }, @bad;
    }
    return \%res;
}


# /metrics as { 'name{labels}' => value }
sub metrics {
    my ($port) = @_;
    my ($st, undef, $body) = http_request('GET', '/metrics', '',
                                          port => $port);
    die "GET /metrics: $st\n" unless $st == 200;
    my %m;
    for (split /\n/, $body) {
        next if /^#/;
        $m{$1} = $2 if /^(\S+) (\S+)$/;
    }
    return \%m;
}


# the backend idle as /metrics shows it: nothing running or waiting, no
# KV-cache block and no channel slot in use.  Polls up to $secs for the
# last steps to settle; returns '' or what is not idle.
sub idle_metrics_ok {
    my ($port, $model, $secs) = @_;
    my $deadline = time + ($secs // 10);
    my $l = "{model=\"$model\"}";
    my @want = map { "$_$l" } qw(ngx_gpu_num_requests_running
        ngx_gpu_num_requests_waiting ngx_gpu_kv_cache_usage_ratio
        ngx_gpu_channel_slots_in_use);
    my $why;
    for (;;) {
        my $m = metrics($port);
        $why = join ', ', map { "$_ = " . ($m->{$_} // 'absent') }
                          grep { ($m->{$_} // 'x') ne '0' } @want;
        return '' if $why eq '';
        last if time > $deadline;
        sleep 0.1;
    }
    return $why;
}


# anonymous resident memory (kB) of a process: the heap and anonymous
# mappings, without file pages (the model's weights) or shared memory
sub proc_rss_anon {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or die "/proc/$pid/status: $!";
    while (my $l = <$fh>) {
        return $1 if $l =~ /^RssAnon:\s+(\d+) kB/;
    }
    die "no RssAnon in /proc/$pid/status\n";
}


sub proc_fds {
    my ($pid) = @_;
    opendir my $d, "/proc/$pid/fd" or die "/proc/$pid/fd: $!";
    my $n = grep { !/^\./ } readdir $d;
    closedir $d;
    return $n;
}


sub proc_ppid {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/stat" or die "/proc/$pid/stat: $!";
    my $line = <$fh>;
    # pid (comm) state ppid ...
    return $line =~ /\) \S+ (\d+) / ? $1 : undef;
}


# the master's pid (from its pid file) and its workers' pids
sub nginx_pids {
    my ($pid_file) = @_;
    open my $fh, '<', $pid_file or die "$pid_file: $!";
    my $master = <$fh>;
    chomp $master;
    my @workers;
    opendir my $d, '/proc' or die "/proc: $!";
    for my $p (grep { /^\d+$/ } readdir $d) {
        open my $st, '<', "/proc/$p/stat" or next;
        my $line = <$st> // '';
        # pid (comm) state ppid ...
        push @workers, $p if $line =~ /\) \S+ (\d+) / && $1 == $master;
    }
    closedir $d;
    return ($master, sort { $a <=> $b } @workers);
}


sub valgrind_or_skip {
    if (system('valgrind --version >/dev/null 2>&1') != 0) {
        Test::More->builder->skip_all('valgrind is not installed '
            . '(scripts/install-deps --test installs it)');
    }
}


# The backend to run under valgrind: one without the CUDA engine.  A
# build with nvcc links cuBLAS, cuDNN and the CUDA runtime, whose
# start-up alone takes memcheck ~12 s (and glibc's loader trips it in
# cuBLAS's constructors); the CPU engine's code and every per-request
# path are the same.  Built here from the same sources when needed.
sub cpu_only_backend {
    my $bd = File::Spec->rel2abs($ENV{NGX_GPU_BUILD} // "build");
    my $bin = $ENV{TEST_NGINX_GPU_BACKEND};
    return $bin if qx{ldd $bin 2>/dev/null} !~ /libcudart/;
    my $out = "$bd/cpu-only";
    system("make -s -j2 -C gpu_backend O=$out NVCC= $out/gpu_backend "
           . ">$bd/cpu-only.log 2>&1") == 0
        or die "building a CPU-only gpu_backend failed: see "
               . "$bd/cpu-only.log\n";
    return "$out/gpu_backend";
}


# valgrind's command line: every memcheck error and every definitely or
# indirectly lost block counts as an error; one log per process; then
# suppression files (t/valgrind/)
sub valgrind_args {
    my ($log_prefix, @supp) = @_;
    return ['valgrind', '--tool=memcheck', '--leak-check=full',
            '--errors-for-leak-kinds=definite,indirect',
            '--show-leak-kinds=definite,indirect', '--error-exitcode=99',
            '--num-callers=30', "--log-file=$log_prefix.%p.log",
            map { "--suppressions=$_" } @supp];
}


# the lines of a valgrind log worth showing: its errors and leaks
sub valgrind_excerpt {
    my ($text) = @_;
    my @l = grep { !/^==\d+== (Memcheck|Copyright|Using|Command|Parent)/ }
            split /\n/, $text;
    return join("\n", @l[0 .. ($#l < 80 ? $#l : 80)]);
}


# one process's valgrind summary (valgrind_summaries) checked clean: no
# memcheck error, no byte definitely or indirectly lost; the log's
# excerpt on an error
sub memcheck_clean_ok {
    my ($v, $who) = @_;
    Test::More::is($v->{errors}, 0, "$who: memcheck errors")
        or Test::More::diag(valgrind_excerpt($v->{text}));
    Test::More::is($v->{definite}, 0, "$who: bytes definitely lost");
    Test::More::is($v->{indirect}, 0, "$who: bytes indirectly lost");
}


# { pid => { errors, definite, indirect, text } } of every valgrind log
sub valgrind_summaries {
    my ($log_prefix) = @_;
    my %s;
    for my $f (glob "$log_prefix.*.log") {
        my ($pid) = $f =~ /\.(\d+)\.log$/ or next;
        open my $fh, '<', $f or next;
        my $text = do { local $/; <$fh> };
        close $fh;
        my ($err) = $text =~ /ERROR SUMMARY: ([\d,]+) errors/;
        my ($def) = $text =~ /definitely lost: ([\d,]+) bytes/;
        my ($ind) = $text =~ /indirectly lost: ([\d,]+) bytes/;
        # "All heap blocks were freed": no leak summary at all
        if ($text =~ /All heap blocks were freed/) {
            $def //= 0;
            $ind //= 0;
        }
        s/,//g for grep { defined } $err, $def, $ind;
        $s{$pid} = { errors => $err, definite => $def, indirect => $ind,
                     text => $text };
    }
    return \%s;
}

1;

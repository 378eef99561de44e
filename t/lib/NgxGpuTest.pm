package NgxGpuTest;

# NgxGpuTest - what ngx-gpu's Test::Nginx suites need beyond Test::Nginx:
# real gpu_backend processes (started before nginx, stopped at exit),
# killing a server process on cue, concurrent HTTP clients, free ports and
# fake upstream peers that fail on cue.  Works the same under the
# installed Test::Nginx and under t/harness.
#
# Environment (set by t/run):
#   TEST_NGINX_GPU_BACKEND  the gpu_backend binary
#   TEST_NGINX_GPU_MODEL    the converted stories260K model directory
#   TEST_NGINX_GPU_MODULE   the module .so, for load_module in main_config
#   TEST_NGINX_GPU_BACKEND_ARGS  options added to every backend's (t/run
#                           runs the scheduler's suites again with
#                           --overlap-steps on)
# Set here:
#   TEST_NGINX_GPU_SOCKET   the backend's Unix socket, for gpu_pass
#   TEST_NGINX_GPU_SOCKET_B the socket of start_backend(name => 'b', ...),
#                           and so on for every name

use strict;
use warnings;

use Exporter 'import';
use File::Path qw(make_path remove_tree);
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);

our @EXPORT = qw(start_backend stop_backend backend_log backend_server_pid
                 kill_backend_in wait_backend_restart http_request http_abort
                 http_concurrent model_dir_or_skip free_port fake_peer
                 start_gpu_nginx stop_gpu_nginx gpu_block_defaults);

my $dir = "/tmp/ngx-gpu-t-$$";
our $last_killed;                   # pid kill_backend_in() aimed at
my %sup_pid;                        # backend name ('' by default) => pid
my %log;
my @fakes;                          # fake_peer() processes
my @nginx;                          # start_gpu_nginx() processes
my $main_pid = $$;

# Stopped by a signal (t/run's timeout sends SIGTERM), the suite still
# runs END below: its backends and nginx are in sessions of their own,
# out of the timeout's reach, and perl's default for the signal skips
# END.  A forked helper just exits.
for my $sig (qw(TERM INT HUP)) {
    $SIG{$sig} = sub {
        POSIX::_exit(1) if $$ != $main_pid;
        print STDERR "# stopped by SIG$sig: stopping backends and nginx\n";
        exit 1;
    };
}


# the model directory, or skip the whole file (visibly) without it
sub model_dir_or_skip {
    my $m = $ENV{TEST_NGINX_GPU_MODEL} // '';
    if (!-f "$m/config.json") {
        Test::More->builder->skip_all("the converted stories260K model is "
            . "absent ($m): ../shared/models is needed (make models)");
    }
    return $m;
}


# start gpu_backend (with its supervisor) and wait until it serves; with
# name => 'b' another one, on its own socket ($TEST_NGINX_GPU_SOCKET_B);
# bin => another gpu_backend binary, wrap => [a command it runs under]
# (valgrind ...), start_timeout => seconds (60)
sub start_backend {
    my (%o) = @_;
    my $bin = $o{bin} // $ENV{TEST_NGINX_GPU_BACKEND}
        or die "TEST_NGINX_GPU_BACKEND is not set (run through t/run)\n";
    my @wrap = @{ $o{wrap} // [] };
    my $model = $o{model} // model_dir_or_skip();
    my @args = @{ $o{args} // [] };
    my $name = $o{name} // '';
    die "backend name \"$name\": letters and digits only\n"
        if $name =~ /\W/;

    make_path($dir);
    chmod 0755, $dir;
    my $sfx = $name eq '' ? '' : "-$name";
    my $sock = "$dir/backend$sfx.sock";
    my $log = $log{$name} = "$dir/backend$sfx.log";
    $ENV{'TEST_NGINX_GPU_SOCKET' . ($name eq '' ? '' : '_' . uc $name)}
        = $sock;

    my $pid = $sup_pid{$name} = fork() // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', $log or die;
        open STDERR, '>>', $log or die;
        POSIX::setsid();
        exec @wrap, $bin, '--model', $model, '--socket', $sock, @args,
             split(' ', $ENV{TEST_NGINX_GPU_BACKEND_ARGS} // '')
            or die "exec $bin: $!";
    }

    my $secs = $o{start_timeout} // 60;
    my $deadline = time + $secs;
    while (time < $deadline) {
        return $sock if backend_log($name) =~ /\bserving\b/ && -S $sock;
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            die "gpu_backend exited at start:\n" . backend_log($name);
        }
        sleep 0.05;
    }
    die "gpu_backend did not start within $secs s:\n" . backend_log($name);
}


# SIGTERM, then SIGKILL to the process group after $wait seconds (5);
# returns the supervisor's wait status, undef if it had to be killed
sub stop_backend {
    my ($name, $wait) = @_;
    $name //= '';
    my $pid = delete $sup_pid{$name} or return;
    kill 'TERM', $pid;
    my $deadline = time + ($wait // 5);
    while (time < $deadline) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            my $status = $?;
            kill 'KILL', -$pid;         # anything it left behind
            return $status;
        }
        sleep 0.05;
    }
    kill 'KILL', -$pid;
    waitpid($pid, 0);
    return undef;
}


sub backend_log {
    my ($name) = @_;
    my $log = $log{$name // ''};
    return '' unless $log && -f $log;
    open my $fh, '<', $log or return '';
    local $/;
    return <$fh>;
}


# pid of the serving process: the last "serving" line names it
sub backend_server_pid {
    my ($name) = @_;
    my @pids = backend_log($name) =~ /gpu_backend\[(\d+)\] info: serving/g;
    return $pids[-1];
}


# SIGKILL the serving process after $delay seconds, from a side process
sub kill_backend_in {
    my ($delay, $name) = @_;
    my $pid = backend_server_pid($name)
        or die "no serving backend process\n";
    $last_killed = $pid;
    my $k = fork() // die "fork: $!";
    if ($k == 0) {
        sleep $delay;
        kill 'KILL', $pid;
        POSIX::_exit(0);
    }
    return $pid;
}


# wait until a new serving process has replaced $old; returns its pid
sub wait_backend_restart {
    my ($old, $timeout, $name) = @_;
    my $deadline = time + ($timeout // 30);
    while (time < $deadline) {
        my $p = backend_server_pid($name);
        return $p if $p && $p != $old && !kill(0, $old);
        sleep 0.05;
    }
    die "the backend was not restarted:\n" . backend_log($name);
}


# one HTTP/1.1 request; returns (status, headers, body, seconds);
# headers => { Name => value } adds request headers
sub http_request {
    my ($method, $path, $body, %o) = @_;
    my $port = $o{port} // $ENV{TEST_NGINX_SERVER_PORT}
               // $ENV{TEST_NGINX_PORT} // 1984;
    my $t0 = time;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $port, Proto => 'tcp',
                                  Timeout => 5)
        or return (0, '', "connect: $!", 0);
    $body //= '';
    my $more = join '', map { "$_: $o{headers}{$_}\r\n" }
                        sort keys %{ $o{headers} // {} };
    print $s "$method $path HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nContent-Type: application/json\r\n$more"
        . "Content-Length: " . length($body) . "\r\n\r\n$body";
    my $resp = '';
    my $timeout = $o{timeout} // 60;
    my $sel = IO::Select->new($s);
    while ($sel->can_read($timeout)) {
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $resp .= $buf;
    }
    close $s;
    my ($head, $rest) = split /\r\n\r\n/, $resp, 2;
    my ($status) = ($head // '') =~ m{^HTTP/1\.\d (\d+)};
    $rest //= '';
    if (($head // '') =~ /^Transfer-Encoding:\s*chunked/mi) {
        my $out = '';
        while ($rest =~ s/^([0-9a-fA-F]+)\r\n//) {
            my $len = hex $1;
            last if $len == 0;
            $out .= substr($rest, 0, $len, '');
            $rest =~ s/^\r\n//;
        }
        $rest = $out;
    }
    return ($status // 0, $head // '', $rest, time - $t0);
}


# send a request, read for $after seconds, hang up; returns what came
sub http_abort {
    my ($method, $path, $body, $after, %o) = @_;
    my $port = $o{port} // $ENV{TEST_NGINX_SERVER_PORT}
               // $ENV{TEST_NGINX_PORT} // 1984;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $port, Proto => 'tcp')
        or return "connect: $!";
    print $s "$method $path HTTP/1.1\r\nHost: localhost\r\n"
        . "Content-Type: application/json\r\n"
        . "Content-Length: " . length($body) . "\r\n\r\n$body";
    my ($resp, $end) = ('', time + $after);
    my $sel = IO::Select->new($s);
    while ((my $left = $end - time) > 0) {
        last unless $sel->can_read($left);
        my $n = sysread($s, my $buf, 65536);
        last unless $n;
        $resp .= $buf;
    }
    close $s;
    return $resp;
}


# $n clients at once, each sending the same request; returns a list of
# [status, body, seconds]
sub http_concurrent {
    my ($n, $method, $path, $body, %o) = @_;
    my @kids = map { http_start($method, $path, $body, %o) } 1 .. $n;
    return map { [http_finish($_)] } @kids;
}


# http_request in a side process, started now; http_finish($h) waits for
# it and returns (status, body, seconds)
sub http_start {
    my ($method, $path, $body, %o) = @_;
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        close $r;
        my ($st, undef, $b, $secs) = http_request($method, $path, $body, %o);
        print $w "$st $secs\n$b";
        close $w;
        POSIX::_exit(0);
    }
    close $w;
    return [$pid, $r];
}

sub http_finish {
    my ($k) = @_;
    my $fh = $k->[1];
    local $/;
    my $line = <$fh> // '';
    waitpid($k->[0], 0);
    my ($first, $b) = split /\n/, $line, 2;
    my ($st, $secs) = split / /, $first // '';
    return ($st, $b // '', $secs);
}


# what most suites' block preprocessor does, as
#   add_block_preprocessor { gpu_block_defaults($_[0], <<'CONF') };
# the module loaded in main_config, and $config (when given) as the
# --- config of a block that has none
sub gpu_block_defaults {
    my ($block, $config) = @_;
    $block->set_value('main_config', 'load_module $TEST_NGINX_GPU_MODULE;')
        unless defined $block->main_config;
    $block->set_value('config', $config)
        if defined $config && !defined $block->config;
}


# a TCP port nothing listens on (now)
sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1, ReuseAddr => 1)
        or die "free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}


# a fake upstream peer on a free port, in a side process; returns the
# port.  Every connection gets, after the request head and body:
#   close     - nothing: the connection is closed (dead before answering)
#   midstream - a 200 event stream with `events` events (2), then the
#               connection is closed without the last chunk
#   sse       - a complete 200 event stream ending with data: [DONE]
# `tag` goes into the events' text, so a client sees which peer answered.
sub fake_peer {
    my (%o) = @_;
    my $mode = $o{mode} // 'close';
    my $tag = $o{tag} // $mode;
    my $events = $o{events} // 2;
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                  LocalPort => $o{port} // 0, Proto => 'tcp',
                                  Listen => 64, ReuseAddr => 1)
        or die "fake peer: $!";
    my $port = $l->sockport;
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        $SIG{PIPE} = 'IGNORE';
        while (my $c = $l->accept) {
            my $req = '';
            while ($req !~ /\r\n\r\n/) {
                my $n = sysread($c, my $buf, 65536);
                last unless $n;
                $req .= $buf;
            }
            my ($len) = $req =~ /^Content-Length:\s*(\d+)/mi;
            my ($head, $got) = split /\r\n\r\n/, $req, 2;
            $got //= '';
            while (length($got) < ($len // 0)) {
                my $n = sysread($c, my $buf, 65536);
                last unless $n;
                $got .= $buf;
            }
            if ($mode ne 'close') {
                syswrite $c, "HTTP/1.1 200 OK\r\n"
                    . "Content-Type: text/event-stream\r\n"
                    . "X-Accel-Buffering: no\r\n"
                    . "X-GPU-Load: queue=0,running=1,kv=0.010\r\n"
                    . "Transfer-Encoding: chunked\r\n\r\n";
                for my $i (1 .. $events) {
                    my $ev = "data: {\"text\":\"$tag $i\"}\n\n";
                    syswrite $c, sprintf("%x\r\n%s\r\n", length $ev, $ev);
                    sleep 0.05;
                }
                if ($mode eq 'sse') {
                    my $ev = "data: [DONE]\n\n";
                    syswrite $c, sprintf("%x\r\n%s\r\n0\r\n\r\n",
                                         length $ev, $ev);
                }
            }
            close $c;
        }
        POSIX::_exit(0);
    }
    close $l;
    push @fakes, $pid;
    return $port;
}


# For suites that are scripts rather than data blocks (a real client, or
# checks across several requests): one nginx, in its own directory under
# this file's temporary one, on a free port, with `location /v1/ {
# gpu_pass }` on the default backend's socket (name => 'b': on that
# backend's).  Returns the port; the nginx is stopped at exit, or by
# stop_gpu_nginx().  conf => more of the server block; http_conf => more
# of the http block (an upstream); wrap => [a command it runs under]
# (valgrind ...); start_timeout => seconds (10).
my %nginx_of;                       # port => pid
sub start_gpu_nginx {
    my (%o) = @_;
    my $name = $o{name} // '';
    my $more = $o{conf} // '';
    my $http_more = $o{http_conf} // '';
    my @wrap = @{ $o{wrap} // [] };
    my $sock = $ENV{'TEST_NGINX_GPU_SOCKET'
                    . ($name eq '' ? '' : '_' . uc $name)};
    my $port = free_port();
    my $nd = "$dir/nginx-$port";
    make_path("$nd/logs");
    open my $c, '>', "$nd/nginx.conf" or die "$nd/nginx.conf: $!";
    print $c <<"CONF";
load_module $ENV{TEST_NGINX_GPU_MODULE};
daemon off;
master_process off;
error_log $nd/logs/error.log info;
pid $nd/logs/nginx.pid;
events { worker_connections 64; }
http {
    access_log off;
    $http_more
    server {
        listen 127.0.0.1:$port;
        location /v1/ { gpu_pass unix:$sock; }
        $more
    }
}
CONF
    close $c;

    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        exec @wrap, $ENV{TEST_NGINX_BINARY} // 'nginx', '-p', $nd, '-c',
             "$nd/nginx.conf" or die "exec nginx: $!";
    }
    push @nginx, $pid;
    $nginx_of{$port} = $pid;
    # ready once it listens and its worker has connected to the backend:
    # before that a request gets 503 backend_unavailable, which a suite's
    # first request must not see by chance
    my $deadline = time + ($o{start_timeout} // 10);
    while (time < $deadline) {
        if (IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port")
            && open(my $log, '<', "$nd/logs/error.log"))
        {
            my $text = do { local $/; <$log> };
            return $port if $text =~ /gpu backend "unix:\Q$sock\E" connected/;
        }
        sleep 0.05;
    }
    die "nginx did not listen on $port or reach its backend: see "
        . "$nd/logs/error.log\n";
}


# stop the nginx of start_gpu_nginx() on $port with $sig ('QUIT': let
# it finish its requests); its wait status, undef if it had to be killed
# after $wait seconds (10)
sub stop_gpu_nginx {
    my ($port, $sig, $wait) = @_;
    my $pid = delete $nginx_of{$port} or return;
    @nginx = grep { $_ != $pid } @nginx;
    kill $sig // 'QUIT', $pid;
    my $deadline = time + ($wait // 10);
    while (time < $deadline) {
        return $? if waitpid($pid, POSIX::WNOHANG()) == $pid;
        sleep 0.05;
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
    return undef;
}


END {
    local $?;                       # keep the test's exit status
    for my $pid (@nginx) {
        kill 'TERM', $pid;
        waitpid($pid, 0);
    }
    stop_backend($_) for keys %sup_pid;
    for my $pid (@fakes) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
    remove_tree($dir) if -d $dir && !$ENV{TEST_NGINX_NO_CLEAN};
}

1;

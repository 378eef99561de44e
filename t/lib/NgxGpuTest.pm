package NgxGpuTest;

# NgxGpuTest - what ngx-gpu's Test::Nginx suites need beyond Test::Nginx:
# a real gpu_backend process (started before nginx, stopped at exit),
# killing its server process on cue, and concurrent HTTP clients.  Works
# the same under the installed Test::Nginx and under t/harness.
#
# Environment (set by t/run):
#   TEST_NGINX_GPU_BACKEND  the gpu_backend binary
#   TEST_NGINX_GPU_MODEL    the converted stories260K model directory
#   TEST_NGINX_GPU_MODULE   the module .so, for load_module in main_config
# Set here:
#   TEST_NGINX_GPU_SOCKET   the backend's Unix socket, for gpu_pass

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
                 http_concurrent model_dir_or_skip);

my $dir = "/tmp/ngx-gpu-t-$$";
our $last_killed;                   # pid kill_backend_in() aimed at
my $sup_pid;
my $log;


# the model directory, or skip the whole file (visibly) without it
sub model_dir_or_skip {
    my $m = $ENV{TEST_NGINX_GPU_MODEL} // '';
    if (!-f "$m/config.json") {
        Test::More::plan(skip_all => "the converted stories260K model is "
            . "absent ($m): ../shared/models is needed (make models)");
    }
    return $m;
}


# start gpu_backend (with its supervisor) and wait until it serves
sub start_backend {
    my (%o) = @_;
    my $bin = $ENV{TEST_NGINX_GPU_BACKEND}
        or die "TEST_NGINX_GPU_BACKEND is not set (run through t/run)\n";
    my $model = $o{model} // model_dir_or_skip();
    my @args = @{ $o{args} // [] };

    make_path($dir);
    chmod 0755, $dir;
    my $sock = "$dir/backend.sock";
    $log = "$dir/backend.log";
    $ENV{TEST_NGINX_GPU_SOCKET} = $sock;

    $sup_pid = fork() // die "fork: $!";
    if ($sup_pid == 0) {
        open STDOUT, '>>', $log or die;
        open STDERR, '>>', $log or die;
        POSIX::setsid();
        exec $bin, '--model', $model, '--socket', $sock, @args
            or die "exec $bin: $!";
    }

    my $deadline = time + 60;
    while (time < $deadline) {
        return $sock if backend_log() =~ /\bserving\b/ && -S $sock;
        if (waitpid($sup_pid, POSIX::WNOHANG()) == $sup_pid) {
            die "gpu_backend exited at start:\n" . backend_log();
        }
        sleep 0.05;
    }
    die "gpu_backend did not start within 60 s:\n" . backend_log();
}


sub stop_backend {
    return unless $sup_pid;
    kill 'TERM', $sup_pid;
    for (1 .. 100) {
        last if waitpid($sup_pid, POSIX::WNOHANG()) == $sup_pid;
        sleep 0.05;
    }
    kill 'KILL', -$sup_pid;
    waitpid($sup_pid, 0);
    undef $sup_pid;
}


sub backend_log {
    return '' unless $log && -f $log;
    open my $fh, '<', $log or return '';
    local $/;
    return <$fh>;
}


# pid of the serving process: the last "serving" line names it
sub backend_server_pid {
    my @pids = backend_log() =~ /gpu_backend\[(\d+)\] info: serving/g;
    return $pids[-1];
}


# SIGKILL the serving process after $delay seconds, from a side process
sub kill_backend_in {
    my ($delay) = @_;
    my $pid = backend_server_pid() or die "no serving backend process\n";
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
    my ($old, $timeout) = @_;
    my $deadline = time + ($timeout // 30);
    while (time < $deadline) {
        my $p = backend_server_pid();
        return $p if $p && $p != $old && !kill(0, $old);
        sleep 0.05;
    }
    die "the backend was not restarted:\n" . backend_log();
}


# one HTTP/1.1 request; returns (status, headers, body, seconds)
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
    print $s "$method $path HTTP/1.1\r\nHost: localhost\r\n"
        . "Connection: close\r\nContent-Type: application/json\r\n"
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
    my @kids;
    for my $i (1 .. $n) {
        pipe(my $r, my $w) or die "pipe: $!";
        my $pid = fork() // die "fork: $!";
        if ($pid == 0) {
            close $r;
            my ($st, undef, $b, $secs) = http_request($method, $path,
                                                      $body, %o);
            print $w "$st $secs\n$b";
            close $w;
            POSIX::_exit(0);
        }
        close $w;
        push @kids, [$pid, $r];
    }
    my @res;
    for my $k (@kids) {
        my $fh = $k->[1];
        local $/;
        my $line = <$fh> // '';
        waitpid($k->[0], 0);
        my ($first, $b) = split /\n/, $line, 2;
        my ($st, $secs) = split / /, $first // '';
        $b //= '';
        push @res, [$st, $b, $secs];
    }
    return @res;
}


END {
    local $?;                       # keep the test's exit status
    stop_backend();
    remove_tree($dir) if -d $dir && !$ENV{TEST_NGINX_NO_CLEAN};
}

1;

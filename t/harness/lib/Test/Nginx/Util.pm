package Test::Nginx::Util;

# ngx-gpu compatibility harness -- server management and data-section parsing.
#
# This is an independent, minimal re-implementation of the parts of
# Test::Nginx (openresty/test-nginx) that the ngx-gpu suites use.  It is only
# put on @INC by the test runner when the real Test::Nginx is not installed.
# Pure core Perl.  See t/harness/README.md.

use v5.10;
use strict;
use warnings;

use Exporter 'import';
use POSIX qw(:sys_wait_h SIGQUIT SIGKILL);
use Time::HiRes qw(sleep time);
use File::Spec ();
use File::Path qw(make_path remove_tree);
use List::Util qw(shuffle);
use IO::Socket::INET ();
use Test::More ();

our @EXPORT = qw(
    run_tests run_test blocks repeat_each no_shuffle workers worker_connections
    master_on master_off master_process_enabled log_level no_long_string
    no_root_location env_to_nginx add_block_preprocessor add_cleanup_handler
    config_preamble server_port server_port_for_client server_addr
    server_name server_root html_dir timeout no_nginx_manager
    check_accum_error_log bail_out is_str parse_time sleep_time
    error_log_data access_log_data trim parse_headers
    $ServerAddr $ServerName $ServerPort $ServerPortForClient $NoLongString
    $ServRoot $PidFile $ConfFile $RepeatEach
);

# ---------------------------------------------------------------------------
# Settings.  Same environment knobs and defaults as the real harness.
# ---------------------------------------------------------------------------
our $RepeatEach         = 1;
our $NoShuffle          = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $Timeout            = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $NginxBinary        = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $Workers            = 1;
our $WorkerConnections  = 64;
our $LogLevel           = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcessEnabled = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $ServerPort = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
our $ServerPortForClient = $ENV{TEST_NGINX_CLIENT_PORT} || $ServerPort;
our $ServerAddr         = '127.0.0.1';
our $ServerName         = 'localhost';
our $NoRootLocation     = 0;
our $NoLongString       = 0;
our $NoNginxManager     = $ENV{TEST_NGINX_NO_NGINX_MANAGER} || 0;
our $ConfigPreamble     = '';
our $TestNginxSleep     = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $CheckAccumErrLog   = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};
our $ForceRestart       = $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST} // 1;
our $LoadModules        = $ENV{TEST_NGINX_LOAD_MODULES};
our $Verbose            = $ENV{TEST_NGINX_VERBOSE};
our (@EnvToNginx, @BlockPreprocessors, @CleanupHandlers);

our $ServRoot   = $ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot');
$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;
our $LogDir     = "$ServRoot/logs";
our $ErrLogFile = "$LogDir/error.log";
our $AccLogFile = "$LogDir/access.log";
our $HtmlDir    = "$ServRoot/html";
our $ConfDir    = "$ServRoot/conf";
our $ConfFile   = "$ConfDir/nginx.conf";
our $PidFile    = "$LogDir/nginx.pid";

our $ErrLogFilePos = 0;
our $PrevConfig;
our $NginxVersion;
our $RunTestHelper;          # installed by Test::Nginx::Socket
our $StartedNginx;           # we launched an nginx that may still run
my  $MainPid = $$;           # END only cleans up in the process that loaded us

# --- simple setters/getters (set with an argument, get without) ----------
sub repeat_each  { $RepeatEach = shift if @_; $RepeatEach }
sub workers      { $Workers = shift if @_; $Workers }
sub worker_connections { $WorkerConnections = shift if @_; $WorkerConnections }
sub log_level    { $LogLevel = shift if @_; $LogLevel }
sub server_port  { $ServerPort = shift if @_; $ServerPort }
sub server_port_for_client { $ServerPortForClient = shift if @_; $ServerPortForClient }
sub server_addr  { $ServerAddr = shift if @_; $ServerAddr }
sub server_name  { $ServerName = shift if @_; $ServerName }
sub timeout      { $Timeout = shift if @_; $Timeout }
sub no_shuffle ()        { $NoShuffle = 1 }
sub no_long_string ()    { $NoLongString = 1 }
sub no_root_location ()  { $NoRootLocation = 1 }
sub no_nginx_manager ()  { $NoNginxManager = 1 }
sub check_accum_error_log () { $CheckAccumErrLog = 1 }
sub master_on ()         { $MasterProcessEnabled = 'on' }
sub master_off ()        { $MasterProcessEnabled = 'off' }
sub master_process_enabled {
    $MasterProcessEnabled = $_[0] ? 'on' : 'off' if @_;
    $MasterProcessEnabled;
}
sub config_preamble ($)  { $ConfigPreamble = shift }
sub server_root ()       { $ServRoot }
sub html_dir ()          { $HtmlDir }
sub sleep_time           { $TestNginxSleep }
sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }
sub add_cleanup_handler ($)    { unshift @CleanupHandlers, shift }

sub env_to_nginx {
    die "env_to_nginx: no arguments specified\n" unless @_;
    for my $v (@_) {
        die "env_to_nginx: bad argument value: $v\n"
            if $v !~ /^[A-Za-z_]/ || $v =~ /\n/;
        push @EnvToNginx, $v;
    }
}

sub is_str {
    my ($got, $expected, $desc) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return Test::More::like($got, $expected, $desc) if ref $expected eq 'Regexp';
    return Test::More::is($got, $expected, $desc);
}

# "500ms", "2s" or a plain number of seconds
sub parse_time {
    my $tm = shift;
    return undef unless defined $tm;
    if ($tm =~ s/([^_a-zA-Z])ms$/$1/) { $tm /= 1000 }
    else { $tm =~ s/([^_a-zA-Z])s$/$1/ }
    return $tm;
}

sub trim {
    my $s = shift;
    return undef unless defined $s;
    $s =~ s/^\s+|\s+$//g;
    $s =~ s/\n/ /g;
    $s =~ s/\s{2,}/ /g;
    return $s;
}

# "Name: value" lines -> { name => value };  "!Name" -> { Name => undef }
sub parse_headers {
    my %h;
    for my $line (split /\n/, shift // '') {
        $line =~ s/^\s+|\s+$//g;
        next if $line eq '';
        if ($line =~ s/^!\s*//) { $h{$line} = undef; next }
        my ($k, $v) = split /\s*:\s*/, $line, 2;
        $h{$k} = $v // '';
    }
    return \%h;
}

sub bail_out {
    cleanup();
    Test::More::BAIL_OUT(join '', @_);
}

# ---------------------------------------------------------------------------
# Test::Base-compatible __DATA__ parsing.
#
# "=== name" starts a block; "--- section [filters]" starts a section whose
# value runs up to the next section; "--- section: value" is an inline value.
# Every value goes through the default filters "norm trim" first, then the
# filters named after the section (eval, chomp, ...).  "-trim" removes a
# default filter.  ONLY / SKIP / LAST sections select blocks.
# ---------------------------------------------------------------------------
my $BlockList;

sub _spec_text {
    no strict 'refs';
    my $fh = \*{'main::DATA'};
    local $/;
    my $spec = defined fileno($fh) ? <$fh> : undef;
    if (!defined $spec && open my $in, '<', $0) {
        $spec = <$in>;
        $spec = $spec =~ /^__(?:DATA|END)__\r?\n(.*)\z/ms ? $1 : '';
    }
    return $spec // '';
}

sub _make_block {
    my $hunk = shift;
    my $b = Test::Nginx::Util::Block->new;
    $hunk =~ s/\A===[ \t]*(.*)\s+//;
    my $name = $1;
    my @parts = split /^--- +\(?(\w+)\)? *(.*)?\n/m, $hunk;
    my $desc = shift @parts // '';
    $desc = $name unless $desc =~ /\S/;
    $desc =~ s/\s*\z//;
    $b->set_value(description => $desc);
    while (@parts) {
        my ($type, $filters, $value) = splice @parts, 0, 3;
        $filters //= '';
        $value   //= '';
        if ($filters =~ /:(\s|\z)/) {          # inline "--- name [filters]: value"
            die "Extra lines not allowed in '$type' section\n" if $value =~ /\S/;
            ($filters, $value) = split /\s*:(?:\s+|\z)/, $filters, 2;
            $value //= '';
            $value =~ s/^\s*(.*?)\s*$/$1/;
        }
        $b->{_filters}{$type} = $filters;
        push @{ $b->{_order} }, $type;
        $b->set_value($type, $value);
    }
    $b->set_value(name => $name);
    return $b;
}

sub _block_list {
    return $BlockList if $BlockList;
    my @hunks = (_spec_text() =~ /^(===.*?(?=^===|\z))/msg);
    my @blocks;
    for my $hunk (@hunks) {
        my $b = _make_block($hunk);
        if (exists $b->{ONLY}) {
            Test::More::diag("I found ONLY: maybe you're debugging?");
            @blocks = ($b);
            last;
        }
        next if exists $b->{SKIP};
        push @blocks, $b;
        last if exists $b->{LAST};
    }
    return $BlockList = \@blocks;
}

# blocks()         -> all (filtered) blocks; in scalar context their number
# blocks('name')   -> only blocks that have a section 'name'
sub blocks {
    my $section = shift;
    my @b = @{ _block_list() };
    @b = grep { exists $_->{$section} } @b if $section;
    return scalar @b unless wantarray;
    $_->run_filters for @b;
    return @b;
}

# --- filters (same names/semantics as Test::Base::Filter's common ones) ----
package Test::Nginx::Util::Filter {
    # 'eval' runs the section text as Perl code here, in a package of its own.
    sub do_eval { my @r = eval $_[0]; return $@ if $@; return @r }
}

our %Filters = (
    norm    => sub { my (undef, $t) = @_; $t ||= ''; $t =~ s/\015\012/\n/g;
                     $t =~ s/\r/\n/g; $t },
    trim    => sub { shift; map { s/\A([ \t]*\n)+//; s/(?<=\n)\s*\z//g; $_ } @_ },
    chomp   => sub { shift; map { chomp; $_ } @_ },
    chop    => sub { shift; map { chop; $_ } @_ },
    unchomp => sub { shift; map { "$_\n" } @_ },
    eval    => sub { Test::Nginx::Util::Filter::do_eval($_[1]) },
    lines   => sub { my (undef, $t) = @_; length $t ? ($t =~ /^(.*\n?)/gm) : () },
    join    => sub { my $sep = shift // ''; join $sep, @_ },
    array   => sub { shift; [@_] },
    append  => sub { my $s = shift // ''; map { $_ . $s } @_ },
    prepend => sub { my $s = shift // ''; map { $s . $_ } @_ },
);

package Test::Nginx::Util::Block {
    our $AUTOLOAD;

    sub new { bless { _order => [], _filters => {} }, shift }

    sub set_value {
        my ($self, $key, @v) = @_;
        $self->{$key} = [@v];
    }

    # any section name is an accessor: first value in scalar context.  Like
    # Test::Base, a missing section gives () in list context, so use
    # "scalar $block->x" inside argument lists.
    sub AUTOLOAD {
        my $self = shift;
        (my $name = $AUTOLOAD) =~ s/.*:://;
        return if $name eq 'DESTROY';
        die "Not allowed to set values for '$name'\n" if @_;
        my $v = $self->{$name} or return;
        return wantarray ? @$v : $v->[0];
    }

    sub run_filters {
        my $self = shift;
        return if $self->{_filtered}++;
        for my $type (@{ $self->{_order} }) {
            my @value = @{ $self->{$type} };
            my (@list, @append);
            for my $name ('norm', 'trim', split(/\s+/, $self->{_filters}{$type} // '')) {
                my $f = $name;
                last unless length $f;
                if ($f =~ s/^-//)     { @list = grep { $_ ne $f } @list }
                elsif ($f =~ s/^\+//) { push @append, $f }
                else                  { push @list, $f }
            }
            for my $f (@list, @append) {
                my $arg = $f =~ s/=(.*)$// ? $1 : undef;
                no strict 'refs';
                if (defined &{"main::$f"}) {   # user filter defined in the .t
                    local $_ = join '', @value;
                    @value = &{"main::$f"}(@value);
                    @value = ($_) if !@value || (@value == 1 && $value[0] =~ /\A(\d+|)\z/);
                } else {
                    my $code = $Test::Nginx::Util::Filters{$f}
                        or die "Can't find a function or method for '$f' filter\n";
                    @value = $code->($arg, @value);
                }
                $self->{$type} = [@value];
            }
        }
    }
}

# ---------------------------------------------------------------------------
# nginx server management
# ---------------------------------------------------------------------------

# $TEST_NGINX_FOO -> $ENV{TEST_NGINX_FOO};  $TEST_NGINX_RAND_PORT_N -> free port
sub expand_env_in_text {
    my ($text, $name, $rand_ports) = @_;
    return undef unless defined $text;
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        my $var = $1;
        if ($var =~ /^TEST_NGINX_RAND_PORT_\d+$/) {
            $rand_ports->{$var} //= _free_port($rand_ports)
                // bail_out("$name - Cannot find a free port for $var.\n");
        } else {
            defined $ENV{$var} or bail_out("$name - No environment $var defined.\n");
            $ENV{$var};
        }
    }eg;
    return $text;
}

sub _free_port {
    my $used = shift;
    my %used = map { $_ => 1 } $ServerPort, values %$used;
    for (1 .. 1000) {
        my $port = int(rand 63550) + 1985;
        next if $used{$port};
        my $s = IO::Socket::INET->new(LocalAddr => $ServerAddr, LocalPort => $port,
                                      Proto => 'tcp', Listen => 1, ReuseAddr => 1);
        if ($s) { close $s; return $port }
    }
    return undef;
}

sub get_nginx_version {
    my $out = `$NginxBinary -V 2>&1`;
    bail_out("Failed to get the version of the Nginx in PATH: " . ($out // ''))
        if !defined $out || $? != 0;
    if ($out =~ m{(?:nginx|openresty)[^/]*/(\d+)\.(\d+)\.(\d+)}s
        || $out =~ m{\w+/(\d+)\.(\d+)\.(\d+)}s) {
        return sprintf "%d.%03d%03d", $1, $2, $3;
    }
    bail_out("Failed to parse the output of \"nginx -V\": $out\n");
}

sub setup_server_root {
    if (-d $ServRoot) {
        remove_tree($ConfDir, $HtmlDir, $LogDir,
                    glob("$ServRoot/*_cache"), glob("$ServRoot/*_temp"));
    }
    for my $d ($ServRoot, $LogDir, $HtmlDir, $ConfDir) {
        -d $d or make_path($d) or bail_out("Failed to do mkdir $d\n");
    }
    open my $out, '>', "$HtmlDir/index.html"
        or bail_out("Can't open $HtmlDir/index.html for writing: $!\n");
    print $out '<html><head><title>It works!</title></head><body>It works!</body></html>';
    close $out;
}

# --- user_files: ">>> path [touch-date]" lines followed by the file body ---
sub write_user_files {
    my ($block, $rand_ports) = @_;
    my $files = $block->user_files or return;
    my $name = $block->name;
    if (!ref $files) {
        my @list;
        for my $line (split /^/, $files) {
            if ($line =~ /^>>> (\S+)(?:\s+(.+))?/) { push @list, [$1, undef, $2] }
            elsif (@list) { $list[-1][1] .= $line }
        }
        $files = \@list;
    }
    for my $f (@$files) {
        my ($fname, $body, $date) = @$f;
        my $path = $fname =~ m{^/} ? $fname : "$HtmlDir/$fname";
        make_path($1) if $path =~ m{(.*)/} && !-d $1;
        $body = expand_env_in_text($body // '', $name, $rand_ports);
        open my $out, '>', $path or bail_out("$name - Cannot open $path for writing: $!\n");
        binmode $out;
        print $out $body;
        close $out;
        system("TZ=GMT touch -t '$date' '$path'") if $date;
    }
}

sub write_config_file {
    my ($block, $config, $rand_ports) = @_;
    my $name = $block->name;
    my $http_config = expand_env_in_text(scalar $block->http_config, $name, $rand_ports) // '';
    my $main_config = $block->main_config // '';
    if ($LoadModules) {
        $main_config .= join ' ', map { "load_module $_;" } grep { $_ } split /\s+/, $LoadModules;
    }
    $main_config = expand_env_in_text($main_config, $name, $rand_ports);
    my $post_main = expand_env_in_text(scalar $block->post_main_config, $name, $rand_ports) // '';
    my $err_log   = $block->error_log_file || $ErrLogFile;
    (my $sname = $block->server_name // $ServerName) =~ s/(['\\])/\\$1/g;
    $config //= '';

    my $env = join '', map { my $v = /\s/ ? "'$_'" : $_; "env $v;\n" } @EnvToNginx;
    my $root_loc = $NoRootLocation ? '' : <<"EOC";
        location / {
            root $HtmlDir;
            index index.html index.htm;
        }
EOC
    my $user = $> == 0 ? "user root;\n" : '';

    open my $out, '>', $ConfFile or bail_out("Can't open $ConfFile for writing: $!\n");
    print $out <<"EOC";
worker_processes  $Workers;
daemon on;
master_process $MasterProcessEnabled;
error_log $err_log $LogLevel;
pid       $PidFile;
env MOCKEAGAIN_VERBOSE;
env MOCKEAGAIN;
env MOCKEAGAIN_WRITE_TIMEOUT_PATTERN;
env LD_PRELOAD;
env LD_LIBRARY_PATH;
env DYLD_INSERT_LIBRARIES;
env DYLD_FORCE_FLAT_NAMESPACE;
$env
$main_config

http {
    access_log $AccLogFile;

    default_type text/plain;
    keepalive_timeout  68;

$http_config

    server {
        listen          $ServerPort;
        server_name     '$sname';

        client_max_body_size 30M;

        # Begin preamble config...
$ConfigPreamble
        # End preamble config...

        # Begin test case config...
$config
        # End test case config.

$root_loc    }
}

$post_main

events {
    accept_mutex off;

    worker_connections  $WorkerConnections;
}
env ASAN_OPTIONS;
env MOCKNOEAGAIN_VERBOSE;
env MOCKNOEAGAIN;
$user
EOC
    close $out;
}

# alive and not a zombie (the daemonized nginx is not our child, so nothing
# here reaps it; a PID 1 that does not reap would leave zombies behind)
sub is_running {
    my $pid = shift;
    return 0 unless $pid;
    waitpid $pid, WNOHANG;          # reap it if it is ours (see _subreaper)
    return 0 unless kill 0, $pid;
    if (open my $fh, '<', "/proc/$pid/stat") {
        my $stat = <$fh> // '';
        return 0 if $stat =~ /^\d+ \(.*\) Z/s;
    }
    return 1;
}

sub read_pid_file {
    open my $in, '<', $PidFile or return undef;
    my $pid = <$in> // '';
    close $in;
    $pid =~ s/\s+//g;
    return $pid =~ /^\d+$/ ? $pid : undef;
}

# QUIT, wait up to timeout(), then KILL.  Quiet when nothing is running.
sub stop_nginx {
    my $name = shift;
    my $pid = read_pid_file();
    if (!$pid && $StartedNginx) {       # freshly daemonized: pid file may lag
        for (1 .. 50) { last if $pid = read_pid_file(); sleep 0.02 }
    }
    undef $StartedNginx;
    return unless $pid;
    if (is_running($pid)) {
        kill SIGQUIT, $pid;
        my $left = $Timeout;
        while ($left > 0 && is_running($pid)) { sleep 0.02; $left -= 0.02 }
        if (is_running($pid)) {
            warn "$name - timeout when waiting for the process $pid to exit\n";
            kill SIGKILL, $pid;
            sleep 0.05 while is_running($pid) && ($left += 0.05) < 2;
        }
    }
    unlink $PidFile;
}

sub _tail {
    my ($file, $n) = @_;
    open my $in, '<', $file or return '';
    my @l = <$in>;
    return join '', @l[($#l - $n + 1 > 0 ? $#l - $n + 1 : 0) .. $#l];
}

# Linux: become a "child subreaper" so that the daemonized nginx is
# re-parented to us (not to PID 1) and is_running() can reap it.  Without
# this, a PID 1 that never reaps leaves <defunct> nginx processes around.
my $Subreaper;
sub _subreaper {
    return if $Subreaper++ || $^O ne 'linux';
    my %sys_prctl = (x86_64 => 157, aarch64 => 167);
    my $nr = $sys_prctl{ (POSIX::uname())[4] } or return;
    syscall($nr, 36, 1, 0, 0, 0);   # prctl(PR_SET_CHILD_SUBREAPER, 1)
}

# Start a daemonized nginx.  Returns true on success; on failure emits one
# failing test with nginx's stderr and the error log tail.
sub start_nginx {
    my $name = shift;
    my @cmd = ($NginxBinary, '-p', "$ServRoot/", '-c', $ConfFile);
    my $errf = "$ServRoot/nginx.stderr";
    my $deadline = time + 3;
    _subreaper();
    while (1) {
        my $pid = fork // bail_out("$name - fork() failed: $!");
        if (!$pid) {
            open STDOUT, '>', '/dev/null';
            open STDERR, '>', $errf;
            exec @cmd or POSIX::_exit(127);
        }
        waitpid $pid, 0;
        my $status = $?;
        if ($status == 0) {
            $StartedNginx = 1;
            sleep $TestNginxSleep;
            return 1;
        }
        my $err = _tail($errf, 20);
        # the previous server may still hold the port for a moment
        if ($err =~ /Address already in use/ && time < $deadline) { sleep 0.1; next }
        Test::More::fail("$name - nginx failed to start: \"@cmd\" (status $status)");
        Test::More::diag("nginx stderr:\n$err" . "error.log tail:\n" . _tail($ErrLogFile, 20));
        return 0;
    }
}

sub error_log_data  { _log_lines($ErrLogFile, 1) }
sub access_log_data { _log_lines($AccLogFile, 0) }

# Lines logged since the last call (error log) or the whole file (access log).
sub _log_lines {
    my ($file, $incremental) = @_;
    sleep $TestNginxSleep * 3;     # let nginx finish its log-phase writes
    open my $in, '<', $file or return [];
    seek $in, $ErrLogFilePos, 0 if $incremental && !$CheckAccumErrLog && $ErrLogFilePos;
    my @lines = <$in>;
    $ErrLogFilePos = tell $in if $incremental && !$CheckAccumErrLog;
    close $in;
    return \@lines;
}

# "--- skip_nginx: N: < 1.2.3 [: reason]" / "--- skip_eval: N: perl-expr"
sub _skip_spec {
    my $block = shift;
    my $name = $block->name;
    if (defined(my $s = $block->skip_eval)) {
        $s =~ /^\s*(\d+)\s*:\s*(.*)/s or bail_out("$name - Invalid --- skip_eval spec");
        my ($n, $code) = ($1, $2);
        my $r = eval $code;
        bail_out("$name - skip_eval - failed to eval \"$code\": $@") if $@;
        return ($n, 'skip_eval') if $r;
    }
    if (defined(my $s = $block->skip_nginx)) {
        $s =~ /^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)(?:\s*:\s*(.*))?\s*$/
            or bail_out("$name - Invalid --- skip_nginx spec: $s");
        my ($n, $op, $reason) = ($1, $2, $6 || "nginx version $2 $3.$4.$5");
        my $ver = sprintf "%d.%03d%03d", $3, $4, $5;
        return ($n, $reason) if eval "$NginxVersion $op $ver";
    }
    return;
}

sub run_tests {
    $NginxVersion = get_nginx_version();
    $ENV{TEST_NGINX_SERVER_PORT} //= $ServerPort;
    my @blocks = blocks();
    @blocks = shuffle @blocks unless $NoShuffle;
    for my $block (@blocks) {
        $_->($block) for @BlockPreprocessors;
        $block->set_value(name => "$0 " . $block->name);
        run_test($block);
    }
    cleanup();
}

sub run_test {
    my $block = shift;
    return if defined $block->SKIP;
    my $name = $block->name;
    my $rand_ports = {};
    my $config = expand_env_in_text(scalar $block->config, $name, $rand_ports);
    local $LogLevel = $block->log_level || $LogLevel;

    if (my ($n, $reason) = _skip_spec($block)) {
        SKIP: { Test::More::skip("$name - $reason", $n) }
        return;
    }

    if ($NoNginxManager) {
        # someone else runs nginx
    } elsif (!defined $config) {
        # like the real harness: reuse the running server (no restart, and the
        # error log is NOT cleared)
        bail_out("$name - No '--- config' section specified and could not get previous one.")
            unless defined $PrevConfig;
    } elsif ($ForceRestart || !defined $PrevConfig || $config ne $PrevConfig) {
        $PrevConfig = $config;
        stop_nginx($name);
        setup_server_root();
        write_user_files($block, $rand_ports);
        write_config_file($block, $config, $rand_ports);
        if (!start_nginx($name)) {
            undef $PrevConfig;
            return;
        }
    }

    if (my $init = $block->init) {         # Perl code, run once per block
        eval $init;
        bail_out("$name - init failed: $@") if $@;
    }

    $ErrLogFilePos = 0;
    for my $i (0 .. $RepeatEach - 1) {
        write_user_files($block, $rand_ports) if $i > 0;
        $RunTestHelper->($block, 0, $i);
    }
}

sub cleanup {
    $_->() for @CleanupHandlers;
}

END {
    if ($$ == $MainPid) {
        local $?;     # keep Test::Builder's exit status
        cleanup();
        stop_nginx('END') if !$ENV{TEST_NGINX_NO_CLEAN} && !$NoNginxManager;
    }
}

1;

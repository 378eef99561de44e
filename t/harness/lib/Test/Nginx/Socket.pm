package Test::Nginx::Socket;

# ngx-gpu compatibility harness -- HTTP client and response checks.
#
# Independent, minimal re-implementation of the Test::Nginx::Socket interface
# (openresty/test-nginx) for suites that must also run under the real one.
# Used only when the real module is not installed (see t/harness/README.md).
# Pure core Perl.

use v5.10;
use strict;
use warnings;

use Exporter ();
use IO::Socket::INET ();
use IO::Select ();
use Time::HiRes qw(sleep);
use Digest::MD5 ();
use Digest::SHA ();
use Test::More ();
use Test::Nginx::Util;

our @ISA = ('Exporter');

# Test::More functions re-exported (the same subset Test::Base exports).
my @TestMore = qw(ok is isnt like unlike is_deeply cmp_ok skip todo_skip pass
                  fail eq_array eq_hash eq_set plan can_ok isa_ok diag);
{
    no strict 'refs';
    *{$_} = \&{"Test::More::$_"} for @TestMore;
}

our @EXPORT = (@TestMore, qw(
    env_to_nginx is_str run_tests run_test repeat_each config_preamble
    worker_connections master_process_enabled no_long_string workers
    master_on master_off log_level no_shuffle no_root_location server_name
    server_addr server_root html_dir server_port server_port_for_client
    timeout no_nginx_manager check_accum_error_log add_block_preprocessor
    bail_out add_cleanup_handler add_response_body_check blocks
));

# use Test::Nginx::Socket;               -- no plan yet (call plan() later)
# use Test::Nginx::Socket 'no_plan';     -- or: tests => N / skip_all => why
sub import {
    my ($class, @args) = @_;
    strict->import;                      # like Test::Base: strict + warnings
    warnings->import;
    Test::More::plan(@args) if @args;
    $class->export_to_level(1, $class, @EXPORT);
}

our @ResponseBodyChecks;
sub add_response_body_check ($) { push @ResponseBodyChecks, shift }

$Test::Nginx::Util::RunTestHelper = \&run_test_helper;

# ---------------------------------------------------------------------------
# Building requests
# ---------------------------------------------------------------------------

# more_headers text -> ("Key: val\r\n"..., is_chunked); "#" lines are comments
sub parse_more_headers {
    my ($out, $chunked) = ('', 0);
    for my $h (split /\n+/, shift // '') {
        next if $h =~ /^\s*#/;
        my ($k, $v) = split /:\s*/, $h, 2;
        $v //= '';
        $chunked = 1 if lc $k eq 'transfer-encoding' && $v eq 'chunked';
        $out .= "$k: $v\r\n";
    }
    return ($out, $chunked);
}

# "METHOD [URI [PROTO]]\nbody" -> raw HTTP request.  Host and Connection are
# added unless given; a non-empty body is trimmed and gets a Content-Length
# unless the request is chunked or Content-Length was given.
sub build_request {
    my ($name, $req, $more, $conn) = @_;
    my ($hdr, $chunked) = parse_more_headers($more);
    my ($first, $content) = split /\n/, $req // '', 2;
    bail_out("$name - Request line should be non-empty") unless defined $first && length $first;
    $first =~ /^(\s*)(\S+)( *)((\S+)( *))?((\S+)( *))?(\s*)$/
        or bail_out("$name - Request line is not valid. Should be 'meth [url [version]]' but got \"$first\".");
    my ($meth, $url, $ver) = ($2, $5 // '/', $8 // 'HTTP/1.1');
    $content //= '';
    my $len = '';
    if (!$chunked && $content ne '' && $hdr !~ /(?:^|\n)Content-Length:/) {
        $content =~ s/^\s+|\s+$//gs;
        $len = 'Content-Length: ' . length($content) . "\r\n";
    }
    my $std = '';
    $std .= "Host: $ServerName\r\n"  if $hdr !~ /(?:^|\n)Host:/msi;
    $std .= "Connection: $conn\r\n" if $hdr !~ /(?:^|\n)Connection/msi;
    return "$meth $url $ver\r\n$std$hdr$len\r\n$content";
}

# -> [ request, ... ], each request = [ { value => bytes, delay_before => s }, ... ]
sub get_requests {
    my $block = shift;
    my $name = $block->name;
    if (defined(my $raw = $block->raw_request)) {
        my @p = ref $raw eq 'ARRAY' ? @$raw : ($raw);
        return [[ map { ref $_ ? $_ : { value => $_ } } @p ]];
    }
    my $more = $block->more_headers // '';
    my $hdr = sub {
        my $i = shift;
        return $more unless ref $more eq 'ARRAY';
        return $more->[$i] // bail_out("$name - --- more_headers lacks data for request $i");
    };
    if (defined(my $reqs = $block->pipelined_requests)) {
        ref $reqs eq 'ARRAY' or bail_out("$name - invalid entries in --- pipelined_requests");
        my $all = join '', map {
            build_request($name, $reqs->[$_], $hdr->($_), $_ == $#$reqs ? 'close' : 'keep-alive')
        } 0 .. $#$reqs;
        return [[ { value => $all } ]];
    }
    my $request = $block->request;
    my @list;
    if (ref $request eq 'ARRAY') {
        @list = @$request;
    } else {
        $request //= '';
        1 while $request =~ s/^\s*\#[^\n]+\s+|^\s+//gs;     # leading comments
        @list = ($request);
    }
    my @out;
    for my $i (0 .. $#list) {
        bail_out("$name - request packets (array of arrays) are not supported by this harness")
            if ref $list[$i];
        push @out, [ { value => build_request($name, $list[$i], $hdr->($i), 'close') } ];
    }
    return \@out;
}

# ---------------------------------------------------------------------------
# The client: one connection per request, read until EOF.  The timeout is an
# inactivity timeout (no socket event for that long), like the real harness.
# ---------------------------------------------------------------------------
sub send_request {
    my ($packets, $middle_delay, $timeout, $block) = @_;
    my $name = $block->name;
    my $head_req = (join '', map { $_->{value} } @$packets) =~ /^\s*HEAD\s+/ ? 1 : 0;

    my $sock;
    for (my $try = 1; ; $try++) {
        $sock = IO::Socket::INET->new(PeerAddr => $ServerAddr, PeerPort => $ServerPortForClient,
                                      Proto => 'tcp', Timeout => $timeout);
        last if $sock;
        my $err = $!;
        if ($try >= 15) {
            fail("$name - Can't connect to $ServerAddr:$ServerPortForClient: $err (aborted)\n");
            return (undef, $head_req);
        }
        my $wait = (sleep_time() + sleep_time() * $try) * $try / 2;
        $wait = 1 if $wait > 1;
        warn "$name - Can't connect to $ServerAddr:$ServerPortForClient: $err\n"
             . "\tRetry connecting after $wait sec\n" if $wait >= 0.6;
        sleep $wait;
    }
    $sock->blocking(0);
    local $SIG{PIPE} = 'IGNORE';

    my @queue = @$packets;
    my ($wbuf, $woff) = ((shift @queue)->{value}, 0);
    my $resp = '';
    my $rsel = IO::Select->new($sock);
    my $wsel = IO::Select->new($sock);

    LOOP: while (1) {
        my ($r, $w) = IO::Select->select($rsel, $wsel->count ? $wsel : undef, undef, $timeout);
        if (!$r && !$w) {
            close $sock;
            if (defined $block->abort) { sleep 0.005 }
            else { fail("ERROR: client socket timed out - $name\n") }
            last;
        }
        if ($r && @$r) {
            while (1) {
                my $n = sysread $sock, my $buf, 4096;
                if (!defined $n) {
                    next LOOP if $!{EAGAIN} || $!{EWOULDBLOCK};
                    warn "WARNING: $name - HTTP response read failure: $!\n";
                    last LOOP;
                }
                last LOOP if $n == 0;                 # EOF
                $resp .= $buf;
            }
        }
        if ($w && @$w) {
            while (1) {
                if ($woff < length $wbuf) {
                    my $n = syswrite $sock, $wbuf, length($wbuf) - $woff, $woff;
                    if (!defined $n) {
                        next LOOP if $!{EAGAIN} || $!{EWOULDBLOCK};
                        warn "write failed: $!\n";
                        $resp = "write failed: $!" if $resp eq '';
                        last LOOP;
                    }
                    $woff += $n;
                    next;
                }
                my $next = shift @queue;
                if (!$next) {                         # everything written
                    $wsel->remove($sock);
                    if (defined(my $how = $block->shutdown)) {
                        shutdown $sock, ($how =~ /^$/ ? 1 : $how);
                    }
                    last;
                }
                my $delay = $next->{delay_before} // $middle_delay;
                sleep $delay if $delay;
                ($wbuf, $woff) = ($next->{value}, 0);
            }
        }
    }
    close $sock;
    return ($resp, $head_req);
}

# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------
package Test::Nginx::Socket::Response {
    sub new     { my ($class, %a) = @_; bless {%a}, $class }
    sub code    { $_[0]{code} }
    sub content { my $s = shift; $s->{content} = shift if @_; $s->{content} }
    # case-insensitive; repeated headers are joined with ", "
    sub header {
        my ($s, $k) = @_;
        my @v = map { $_->[1] } grep { lc $_->[0] eq lc $k } @{ $s->{headers} };
        return @v ? join(', ', @v) : undef;
    }
}

# raw bytes -> (response, raw header text, bytes left after this response)
sub parse_response {
    my ($name, $raw, $head_req) = @_;
    my $raw_headers = $raw =~ /(.*?\r\n)\r\n/s ? $1 : '';
    my ($head, $body) = $raw =~ /\A(.*?)\r?\n\r?\n(.*)\z/s ? ($1, $2) : ($raw, '');
    my @lines = split /\r?\n/, $head;
    my (undef, $code) = split ' ', shift(@lines) // '', 3;
    undef $code unless defined $code && $code =~ /^\d+$/;
    my @headers;
    for (@lines) {
        if (/^[ \t]+(.*)/ && @headers) { $headers[-1][1] .= " $1"; next }
        push @headers, [$1, $2] if /^([^\s:]+)[ \t]*:[ \t]*(.*?)\s*$/;
    }
    my $res = Test::Nginx::Socket::Response->new(code => $code, headers => \@headers,
                                                 content => $body);
    return ($res, $raw_headers) if $code && ($code == 304 || $code == 101);

    my $te  = $res->header('Transfer-Encoding');
    my $len = $res->header('Content-Length');
    my $left;
    if (defined $te && $te eq 'chunked') {
        my $decoded = '';
        while (1) {
            if ($body =~ /\G0[ \t]*\r\n\r\n/gc) {
                $left = substr $body, pos $body if pos($body) < length $body;
                last;
            }
            if ($body =~ /\G[ \t]*([A-Fa-f0-9]+)[ \t]*\r\n/gc) {
                my ($size, $p) = (hex $1, pos $body);
                if (length($body) - $p < $size) {
                    fail("$name - invalid chunked data received (not enough octets for the data section)");
                    return;
                }
                $decoded .= substr $body, $p, $size;
                pos($body) = $p + $size;
                if ($body !~ /\G\r\n/gc) {
                    fail("$name - invalid chunked data received (expected CRLF).");
                    return;
                }
            } elsif ($body =~ /\G(.+)/gcs) {
                fail("$name - invalid chunked body received: $1");
                return;
            } else {
                fail("$name - no last chunk found - $body");
                return;
            }
        }
        $res->content($decoded);
    } elsif (defined $len && $len =~ /^\d+$/) {
        if (length $body < $len) {
            warn "WARNING: $name - response body truncated: $len expected, but got ",
                 length $body, "\n" unless $head_req;
        } elsif (length $body > $len) {
            $left = substr $body, $len;
            $res->content(substr $body, 0, $len);
        }
    }
    return ($res, $raw_headers, $left);
}

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

# With several requests every expectation must be an array (one per request).
sub idx_value {
    my ($name, $value, $idx, $need_array) = @_;
    if ($need_array) {
        return $value->[$idx] if ref $value eq 'ARRAY';
        bail_out("$name - You asked for many requests, the expected results should be arrays as well.");
    }
    return ref $value eq 'ARRAY' ? $value->[0] : $value;
}

sub _port_subst {
    my $s = shift;
    return $s if !defined $s || ref $s;
    $s =~ s/\$ServerPort\b/$ServerPort/g;
    $s =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
    return $s;
}

sub check_error_code {
    my ($block, $res, $idx, $need_array) = @_;
    my $name = $block->name;
    my $code = ($res && $res->code) || '';
    if (defined $block->error_code_like) {
        my $v = idx_value($name, scalar $block->error_code_like, $idx, $need_array);
        like($code, qr/$v/sm, "$name - status code ok");
    } elsif (defined $block->error_code) {
        is($code, idx_value($name, scalar $block->error_code, $idx, $need_array), "$name - status code ok");
    } else {
        is($code, 200, "$name - status code ok");
    }
}

sub check_response_headers {
    my ($block, $res, $raw_headers, $idx, $need_array) = @_;
    my $name = $block->name;
    for my $t (qw(like unlike)) {
        my $section = "raw_response_headers_$t";
        my $v = $block->$section;
        next unless defined $v;
        my $exp = idx_value($name, $v, $idx, $need_array);
        ($t eq 'like' ? \&like : \&unlike)->($raw_headers // '', qr/$exp/s,
                                             "$name - raw resp headers $t");
    }
    if (defined $block->response_headers) {
        my $h = parse_headers(idx_value($name, scalar $block->response_headers, $idx, $need_array));
        for my $k (sort keys %$h) {
            if (!defined $h->{$k}) {          # "!Name": must be absent
                unlike($raw_headers // '', qr/^\s*\Q$k\E\s*:/ms,
                       "$name - header $k not present in the raw headers");
                next;
            }
            is(($res ? $res->header($k) : undef) // '', _port_subst($h->{$k}),
               "$name - header $k ok");
        }
    } elsif (defined $block->response_headers_like) {
        my $h = parse_headers(idx_value($name, scalar $block->response_headers_like, $idx, $need_array));
        for my $k (sort keys %$h) {
            my $v = $h->{$k} // '';
            like(($res ? $res->header($k) : undef) // '', qr/^$v$/, "$name - header $k like ok");
        }
    }
}

my %BodyFilters = (
    md5_hex => \&Digest::MD5::md5_hex, sha1_hex => \&Digest::SHA::sha1_hex,
    uc => sub { uc shift }, lc => sub { lc shift }, length => sub { length shift },
    ucfirst => sub { ucfirst shift }, lcfirst => sub { lcfirst shift },
);

# --- response_body_filters: names (md5_hex uc ...) or code refs
sub transform_response_body {
    my ($block, $res, $idx) = @_;
    my $f = $block->response_body_filters;
    return unless $res && defined $res->content && defined $f;
    my $name = $block->name;
    $f = ref $f ? $f : [ split ' ', $f ];
    $f = [$f] unless ref $f eq 'ARRAY';
    $f = $f->[$idx] // bail_out("$name - no response_body_filters for request $idx")
        if ref $f->[0] eq 'ARRAY';
    my $c = $res->content;
    for my $one (ref $f eq 'ARRAY' ? @$f : $f) {
        my $code = ref $one eq 'CODE' ? $one : $BodyFilters{$one}
            // bail_out("$name - unknown filter, \"$one\", in --- response_body_filters");
        $c = $code->($c);
    }
    $res->content($c);
}

sub check_response_body {
    my ($block, $res, $idx, $r, $need_array) = @_;
    my $name = $block->name;
    my $content = $res ? $res->content : undef;
    if (defined $block->response_body) {
        my $exp = _port_subst(idx_value($name, scalar $block->response_body, $idx, $need_array));
        my $desc = "$name - response_body - response is expected (repeated req $r, req $idx)";
        if (ref $exp) {
            like($content, $exp, "$name - response_body - like (repeated req $r, req $idx)");
        } elsif (!is($content, $exp, $desc) && defined $content && defined $exp) {
            my $i = 0;
            $i++ while $i < length $content && $i < length $exp
                && substr($content, $i, 1) eq substr($exp, $i, 1);
            diag("first difference at offset $i (got length " . length($content)
                 . ", expected length " . length($exp) . ")");
        }
    } elsif (defined $block->response_body_like || defined $block->response_body_unlike) {
        my $type = defined $block->response_body_like ? 'like' : 'unlike';
        my $section = "response_body_$type";
        my $pat = _port_subst(idx_value($name, scalar $block->$section, $idx, $need_array));
        my $summary = trim($content) // '';
        $summary = substr($summary, 0, 77) . '...' if length $summary > 80;
        ($type eq 'like' ? \&like : \&unlike)->($content, qr/$pat/s,
            "$name - response_body_$type - response is expected ($summary)");
    }
    $_->($block, $content, $idx, $r, 0) for @ResponseBodyChecks;
}

# section value -> list of patterns (lines of text, a Regexp, or an array)
sub _patterns {
    my $p = shift;
    if (!ref $p) { chomp $p; return [ split /\n+/, $p ] }
    return ref $p eq 'Regexp' ? [$p] : [@$p];
}

sub _line_matches { my ($line, $pat) = @_; ref $pat ? $line =~ $pat : index($line, $pat) >= 0 }

sub _fmt { my $s = shift; chomp $s; $s =~ s/"/\\"/g; $s =~ s/\r/\\r/g; $s =~ s/\n/\\n/g; $s }

# error_log / no_error_log (and access_log / no_access_log) against $lines
sub _check_log_patterns {
    my ($block, $what, $lines, $file, $r) = @_;
    my $name = $block->name;
    if (defined(my $v = $block->$what)) {
        my $pats = _patterns($v);
        for my $line (@$lines) {
            for my $pat (@$pats) {               # each pattern passes once
                next unless defined $pat && _line_matches($line, $pat);
                pass("$name - pattern \"$pat\" matches a line in $file (req $r)");
                undef $pat;
            }
        }
        defined and fail("$name - pattern \"$_\" should match a line in $file (req $r)")
            for @$pats;
    }
    my $no = "no_$what";
    if (defined(my $v = $block->$no)) {
        my $pats = _patterns($v);
        my %found;
        for my $i (0 .. $#$lines) {
            for my $pat (@$pats) {               # every matching line fails
                next unless defined $pat && _line_matches($lines->[$i], $pat);
                $found{$pat} = 1;
                my $end = $i + 10 < $#$lines ? $i + 10 : $#$lines;
                fail("$name - pattern \"" . _fmt($pat) . "\" should not match any line in $file"
                     . " but matches line \"" . _fmt($lines->[$i]) . "\" (req $r)\n"
                     . join '', @$lines[$i + 1 .. $end]);
            }
        }
        pass("$name - pattern \"" . _fmt($_) . "\" does not match a line in $file (req $r)")
            for grep { defined && !$found{$_} } @$pats;
    }
}

sub _contains {
    my ($v, $s) = @_;
    return ref $v eq 'ARRAY' ? (grep { _contains($_, $s) } @$v) : index("$v", $s) >= 0;
}

sub check_error_log {
    my ($block, $r) = @_;
    my $name = $block->name;
    my $lines = Test::Nginx::Util::error_log_data();

    if (defined(my $g = $block->grep_error_log)) {
        $g = $g->[$r] if ref $g eq 'ARRAY';
        my $exp = $block->grep_error_log_out
            // bail_out("$name - No --- grep_error_log_out defined but --- grep_error_log is defined");
        $exp = $exp->[$r] if ref $exp eq 'ARRAY';
        my $out = '';
        for (@$lines) {
            next unless ref $g ? /$g/ : /\Q$g\E/;
            $out .= "$&\n" if $& !~ /\n/;
        }
        is_str($out, $exp, "$name - grep_error_log_out (req $r)");
    } elsif (defined $block->grep_error_log_out) {
        bail_out("$name - No --- grep_error_log defined but --- grep_error_log_out is defined");
    }

    _check_log_patterns($block, 'error_log', $lines, 'error.log', $r);

    # like the real harness: warn about alert/crit/emerg lines nobody asked for
    my @given = grep { defined } scalar $block->error_log, scalar $block->no_error_log;
    for my $lvl (qw(alert crit emerg)) {
        next if grep { _contains($_, "[$lvl") } @given;
        warn "WARNING: $name - " . _fmt($_) . "\n" for grep { /\[$lvl\]/ } @$lines;
    }
    for (grep { /\bAssertion .*?failed\b/ } @$lines) {
        (my $l = $_) =~ s/\n\z//;
        fail("$name - $l\n");
    }
}

sub check_access_log {
    my ($block, $r) = @_;
    return unless defined $block->access_log || defined $block->no_access_log;
    _check_log_patterns($block, 'access_log', Test::Nginx::Util::access_log_data(),
                        'access.log', $r);
}

# ---------------------------------------------------------------------------
# One repetition of one block
# ---------------------------------------------------------------------------
sub run_test_helper {
    my ($block, undef, $r) = @_;
    my $name = $block->name;
    my $reqs = get_requests($block);
    my $timeout = parse_time(scalar $block->timeout) // timeout();
    my $pipe = $block->pipelined_requests;
    my $need_array = $pipe ? 1 : @$reqs > 1;
    my $ignore = defined $block->ignore_response;
    my $idx = 0;

    for my $ri (0 .. $#$reqs) {
        my ($raw, $head_req) = send_request($reqs->[$ri], scalar $block->raw_request_middle_delay,
                                            $timeout, $block);
        my $n = $pipe ? scalar @$pipe : 1;
        for my $k (1 .. $n) {
            unless ($ignore) {
                my ($res, $raw_headers, $left) = parse_response($name, $raw // '', $head_req);
                if ($pipe) {
                    $raw = $left;
                } elsif (defined $left && length $left) {
                    $left =~ s/([\0-\037\200-\377])/sprintf('\x{%02x}', ord $1)/eg;
                    warn "WARNING: $name - unexpected extra bytes after last chunk in ",
                         "response: \"$left\"\n";
                }
                check_error_code($block, $res, $idx, $need_array);
                check_response_headers($block, $res, $raw_headers, $idx, $need_array);
                transform_response_body($block, $res, $idx);
                check_response_body($block, $res, $idx, $r, $need_array);
            }
            if ($k < $n || $ri < $#$reqs) {      # logs are checked after each response
                sleep $block->wait if $block->wait;
                check_error_log($block, $r);
                check_access_log($block, $r) unless $ignore;
            }
            $idx++;
        }
    }
    sleep $block->wait if $block->wait;
    check_error_log($block, $r);
    check_access_log($block, $r) unless $ignore;
}

1;

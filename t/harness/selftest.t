# Self test of the Test::Nginx harness.  Uses stock nginx modules only and
# must pass under both the real Test::Nginx and t/harness/lib:
#
#   cd /work/main && PERL5LIB=t/harness/lib prove -v t/harness/selftest.t
#
# At the end it runs t/harness/selftest-fail.t-helper (blocks that MUST fail)
# in a subprocess and checks that the failures are reported.

use Test::Nginx::Socket 'no_plan';
use File::Basename ();

$ENV{TEST_NGINX_SELFTEST_TAG} = 'sttag42';

no_shuffle();

# master_on/workers are global settings: switch them per block.
add_block_preprocessor(sub {
    my $block = shift;
    if ($block->name =~ /master process/) {
        master_on();
        workers(2);
    } else {
        master_off();
        workers(1);
    }
});

run_tests();

# --- the harness must detect failures -------------------------------------
{
    my $helper = File::Basename::dirname(__FILE__) . '/selftest-fail.t-helper';
    local $ENV{TEST_NGINX_SERVER_PORT} = server_port() + 1;
    local $ENV{TEST_NGINX_PORT}        = server_port() + 1;
    local $ENV{TEST_NGINX_SERVROOT}    = server_root() . '-fail';
    local $ENV{PERL5LIB} = join ':', grep { !ref } @INC;
    delete local $ENV{TEST_NGINX_CLIENT_PORT};
    my $out = `"$^X" "$helper" 2>&1`;
    my $rc = $? >> 8;
    isnt($rc, 0, "failure helper exits non-zero") or diag($out);
    my @expect = (
        qr/^ok \d+ - .*TEST 1: wrong body - status code ok/m,
        qr/^not ok \d+ - .*TEST 1: wrong body - response_body - response is expected/m,
        qr/^not ok \d+ - .*TEST 2: wrong status - status code ok/m,
        qr/^not ok \d+ - ERROR: client socket timed out - .*TEST 3: timeout without abort/m,
        qr/^not ok \d+ - .*TEST 4: headers - header X-Nope ok/m,
        qr/^not ok \d+ - .*TEST 4: headers - header X-Here not present in the raw headers/m,
        qr/^not ok \d+ - .*TEST 5: error_log missing - pattern "this text is never logged" should match a line in error\.log/m,
        qr/^not ok \d+ - .*TEST 6: no_error_log hit - pattern "No such file or directory" should not match any line in error\.log/m,
        qr/^not ok \d+ - .*TEST 7: body_like - response_body_like - response is expected/m,
    );
    for my $re (@expect) {
        like($out, $re, "failure helper output matches $re") or diag($out);
    }
}

__DATA__

=== TEST 1: exact body, response headers, absent header
--- config
    location = /t {
        add_header X-Test yes;
        return 200 "hello\n";
    }
--- request
GET /t
--- response_body
hello
--- response_headers
X-Test: yes
Content-Type: text/plain
!X-Missing
--- error_code: 200



=== TEST 2: response_body_like and response_headers_like
--- config
    location = /t {
        add_header X-Num 12345;
        return 200 "hello world";
    }
--- request
GET /t
--- response_headers_like
X-Num: \d+
Server: nginx.*
--- response_body_like: ^hello w.rld$



=== TEST 3: chomp filter on response_body
--- config
    location = /t {
        return 200 "hello world";
    }
--- request
GET /t
--- response_body chomp
hello world



=== TEST 4: error_code 404 and response_body_unlike
--- config
    location = /t {
        return 404;
    }
--- request
GET /t
--- error_code: 404
--- response_body_unlike: hello



=== TEST 5: more_headers (comment lines are skipped)
--- config
    location = /t {
        return 200 "foo=$http_x_foo bar=$http_x_bar\n";
    }
--- request
GET /t
--- more_headers
X-Foo: 1
# a comment
X-Bar: two
--- response_body
foo=1 bar=two



=== TEST 6: request eval with a body (trimmed, Content-Length added)
--- config
    location = /t {
        return 200 "$request_method len=$content_length\n";
    }
--- request eval
"POST /t\n  " . ("a" x 100) . "  \n"
--- response_body
POST len=100



=== TEST 7: proxy_pass to itself
--- config
    location = /t {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/inner;
    }
    location = /inner {
        add_header X-Inner 1;
        return 200 "inner $request_uri\n";
    }
--- request
GET /t
--- response_headers
X-Inner: 1
--- response_body
inner /inner



=== TEST 8: chunked response is decoded
--- config
    location = /t {
        sub_filter 'world' 'there';
        sub_filter_types *;
        return 200 "hello world\n";
    }
--- request
GET /t
--- response_headers
Transfer-Encoding: chunked
!Content-Length
--- response_body
hello there



=== TEST 9: client_max_body_size gives 413
--- config
    location = /t {
        # (at server level it would clash with the harness's own
        # "client_max_body_size 30M;")
        client_max_body_size 10;
        return 200 "ok\n";
    }
--- request eval
"POST /t\n" . ("x" x 100)
--- error_code: 413
--- response_body_like: 413 Request Entity Too Large
--- error_log
client intended to send too large body



=== TEST 10: timeout + abort on a stalled body (headers already received)
--- user_files eval
">>> big.txt\n" . ("x" x 4000)
--- config
    location = /big.txt {
        root html;
        limit_rate_after 1000;
        limit_rate 1;
    }
--- request
GET /big.txt
--- timeout: 0.3
--- abort
--- error_code: 200
--- response_headers
Content-Length: 4000



=== TEST 11: init runs after the (re)start and before the request
--- init
my $f = html_dir() . "/init.txt";
open my $fh, '>', $f or die "cannot write $f: $!";
print $fh "written by init\n";
close $fh;
--- config
    location = /unused {
        return 204;
    }
--- request
GET /init.txt
--- wait: 0.1
--- response_body
written by init



=== TEST 12: error_log and no_error_log (plain lines)
--- config
    location /static/ {
        root html;
    }
--- request
GET /static/missing.html
--- error_code: 404
--- error_log
No such file or directory
--- no_error_log
[alert]
[emerg]



=== TEST 13: error_log and no_error_log (eval'd arrays with regexes)
--- config
    location /static/ {
        root html;
    }
--- request
GET /static/missing.html
--- error_code: 404
--- error_log eval
[qr/open\(\) "[^"]+missing\.html" failed/, "No such file"]
--- no_error_log eval
[qr/\[crit\]/, "this string is never logged"]



=== TEST 14: $TEST_NGINX_* substitution in main_config, http_config and config
--- main_config
error_log logs/env-$TEST_NGINX_SELFTEST_TAG.log notice;
--- http_config
map $uri $selftest_tag {
    default "$TEST_NGINX_SELFTEST_TAG";
}
--- config
    location = /t {
        return 200 "tag=$selftest_tag port=$TEST_NGINX_SERVER_PORT\n";
    }
    location = /envlog {
        alias logs/env-sttag42.log;
    }
--- request
GET /t
--- response_body
tag=sttag42 port=$ServerPort



=== TEST 15: the main_config error_log file name was substituted
--- main_config
error_log logs/env-$TEST_NGINX_SELFTEST_TAG.log notice;
--- config
    location = /envlog {
        alias logs/env-sttag42.log;
    }
--- request
GET /envlog
--- error_code: 200



=== TEST 16: several requests in one block
--- config
    location = /a {
        return 200 "A\n";
    }
    location = /b {
        return 201 "B\n";
    }
--- request eval
["GET /a", "GET /b"]
--- error_code eval
[200, 201]
--- response_body eval
["A\n", "B\n"]



=== TEST 17: pipelined requests
--- config
    location = /a {
        return 200 "A\n";
    }
    location = /b {
        return 201 "B\n";
    }
--- pipelined_requests eval
["GET /a", "GET /b"]
--- error_code eval
[200, 201]
--- response_body eval
["A\n", "B\n"]



=== TEST 18: raw_request
--- config
    location = /a {
        return 200 "A\n";
    }
--- raw_request eval
"GET /a HTTP/1.0\r\nHost: localhost\r\n\r\n"
--- response_body
A



=== TEST 19: HEAD request has an empty body
--- config
    location = /a {
        return 200 "A\n";
    }
--- request
HEAD /a
--- response_headers
Content-Length: 2
--- response_body



=== TEST 20: master process with 2 workers
--- config
    location = /t {
        return 200 "served\n";
    }
--- request
GET /t
--- response_body
served
--- grep_error_log eval: qr/start worker process \d+/
--- grep_error_log_out eval
qr/\A(?:start worker process \d+\n){2}\z/
--- no_error_log
[emerg]

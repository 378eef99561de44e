# When the backend cannot take a request: 503 with Retry-After if it is
# not running, 429 with Retry-After if its queue is full, 503 while a
# process on the socket accepts but never says hello (and the worker gives
# up on that connection after 10 s, says so, and connects anew).
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;
use IO::Socket::UNIX ();
use POSIX ();
use Time::HiRes ();

$ENV{TEST_NGINX_SILENT_SOCKET} = "/tmp/ngx-gpu-silent-$$.sock";

# one request slot, and slow steps, so that one request fills the queue
start_backend(args => ['--device', 'cpu', '--slots', '1',
                       '--step-delay-us', '5000']);

add_block_preprocessor { gpu_block_defaults($_[0]) };

no_shuffle();
run_tests();

__DATA__

=== TEST 1: no backend on the socket: 503 with Retry-After
--- config
location /v1/ {
    gpu_pass unix:/tmp/ngx-gpu-no-such-backend.sock;
    gpu_retry_after 3;
}
--- request
POST /v1/completions
{"prompt": "hi", "max_tokens": 4}
--- error_code: 503
--- response_headers
Retry-After: 3
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"[a-z_]+","param":null,"code":"[a-z_]+"\}\}$



=== TEST 2: health says so too
--- config
location = /health {
    gpu_health;
}
location /v1/ {
    gpu_pass unix:/tmp/ngx-gpu-no-such-backend.sock;
}
--- request
GET /health
--- error_code: 503
--- response_body_like chomp
"backend":"unavailable"



=== TEST 3: the only slot is busy: 429 with Retry-After
--- config
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
--- init
my $pid = fork();
if ($pid == 0) {
    NgxGpuTest::http_request('POST', '/v1/completions',
        '{"prompt": [1], "max_tokens": 300, "temperature": 0}');
    POSIX::_exit(0);
}
Time::HiRes::sleep(0.5);
--- request
POST /v1/completions
{"prompt": "hi", "max_tokens": 4}
--- error_code: 429
--- response_headers
Retry-After: 1
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"[a-z_]+","param":null,"code":"[a-z_]+"\}\}$



=== TEST 4: health is fine with a running backend
--- config
location = /health {
    gpu_health;
}
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
--- request
GET /health
--- error_code: 200
--- response_body_like chomp
^\{"status":"ok"



=== TEST 5: a process accepts on the socket and never says hello: 503 at once; after 10 s the worker logs it and connects again
--- config
location /v1/ {
    gpu_pass unix:$TEST_NGINX_SILENT_SOCKET;
}
--- init
my $sock = $ENV{TEST_NGINX_SILENT_SOCKET};
my $seen = "$sock.accepted";
unlink $sock, $seen;
my $pid = fork();
if ($pid == 0) {
    my $l = IO::Socket::UNIX->new(Local => $sock, Listen => 16)
        or POSIX::_exit(1);
    my @held;
    while (my $c = $l->accept) {
        push @held, $c;                     # held open, never written to
        open my $f, '>>', $seen or POSIX::_exit(1);
        print $f Time::HiRes::time(), "\n";
        close $f;
    }
    POSIX::_exit(0);
}
# the worker retries the missing socket every 100-200 ms; give it a second
Time::HiRes::sleep(1);
my ($st, undef, $body) = NgxGpuTest::http_request('POST', '/v1/completions',
    '{"prompt": "hi", "max_tokens": 4}');
Test::More::is($st, 503, 'no hello yet: 503');
Time::HiRes::sleep(10.5);
open my $f, '<', $seen;
my @t = $f ? <$f> : ();
kill 'KILL', $pid;
waitpid $pid, 0;
unlink $sock, $seen;
Test::More::ok(@t >= 2, scalar(@t) . " connections: the silent one was given"
                        . " up on and a new one made");
Test::More::ok(@t >= 2 && $t[1] - $t[0] > 9 && $t[1] - $t[0] < 12,
               sprintf('about 10 s apart (%.1f s)',
                       @t >= 2 ? $t[1] - $t[0] : -1));
--- request
POST /v1/completions
{"prompt": "hi", "max_tokens": 4}
--- error_code: 503
--- response_body_like chomp
^\{"error":\{"message":"[^"]+","type":"[a-z_]+","param":null,"code":"[a-z_]+"\}\}$
--- error_log
sent no hello in 10000 ms, reconnecting

# gpu_adaptive and gpu_upstream_status: what nginx -t accepts, and the
# message it gives for what it refuses.  (No Test::Nginx here: a
# configuration that must not load is checked with nginx -t.)
use strict;
use warnings;
use lib 't/lib';
use File::Path qw(make_path remove_tree);
use Test::More;

my $nginx = $ENV{TEST_NGINX_BINARY} // 'nginx';
my $module = $ENV{TEST_NGINX_GPU_MODULE} or die "run through t/run\n";
my $tmp = "/tmp/ngx-gpu-balancer-conf-$$";
make_path("$tmp/logs");

# nginx -t on an http{} body; returns (exit status, output)
sub check {
    my ($http) = @_;
    open my $fh, '>', "$tmp/nginx.conf" or die;
    print $fh "load_module $module;\n"
        . "error_log $tmp/logs/error.log;\npid $tmp/logs/nginx.pid;\n"
        . "events { worker_connections 64; }\n"
        . "http {\n    access_log off;\n$http\n}\n";
    close $fh;
    my $out = `$nginx -t -p $tmp -c $tmp/nginx.conf 2>&1`;
    return ($? >> 8, $out);
}

sub ok_conf {
    my ($name, $http, $like) = @_;
    my ($rc, $out) = check($http);
    is($rc, 0, "$name: accepted") or diag($out);
    like($out, $like, "$name: says so") if $like;
}

sub bad_conf {
    my ($name, $http, $like) = @_;
    my ($rc, $out) = check($http);
    isnt($rc, 0, "$name: refused");
    like($out, $like, "$name: the message") or diag($out);
}

my $servers = "server 127.0.0.1:8081; server 127.0.0.1:8082;";

ok_conf('no parameters', "upstream u { gpu_adaptive; $servers }");

ok_conf('every parameter',
    "upstream u { gpu_adaptive zone=gpu_u:256k interval=250ms stale=4s "
    . "queue_weight=0.75 kv_weight=2 latency_weight=1.5 inflight_weight=0.5 "
    . "backoff=0.25 overload_kv=0.9 overload_queue=32; $servers }");

ok_conf('zone without a size', "upstream u { gpu_adaptive zone=z1; $servers }");

ok_conf('server parameters: weight, max_fails, fail_timeout, max_conns, '
        . 'down, backup',
    "upstream u { gpu_adaptive;\n"
    . "  server 127.0.0.1:8081 weight=3 max_fails=2 fail_timeout=5s "
    . "max_conns=10;\n"
    . "  server 127.0.0.1:8082 down;\n"
    . "  server 127.0.0.1:8083 backup; }");

ok_conf('a single server', "upstream u { gpu_adaptive; server 127.0.0.1:8081; }");

ok_conf('with keepalive after it',
    "upstream u { gpu_adaptive; $servers keepalive 8; }");

ok_conf('with the upstream zone',
    "upstream u { zone u_peers 64k; gpu_adaptive; $servers }");

ok_conf('two upstreams, each its own zone',
    "upstream u { gpu_adaptive; $servers }\n"
    . "upstream v { gpu_adaptive; $servers }");

ok_conf('the status location',
    "upstream u { gpu_adaptive; $servers }\n"
    . "server { listen 127.0.0.1:8090; location = /s { gpu_upstream_status; }"
    . " location / { proxy_pass http://u; } }");

ok_conf('another method after it warns',
    "upstream u { gpu_adaptive; least_conn; $servers }",
    qr/\[warn\] \d+#\d+: load balancing method redefined/);

bad_conf('an unknown parameter',
    "upstream u { gpu_adaptive fast; $servers }",
    qr/\[emerg\] \d+#\d+: invalid parameter "fast"/);

bad_conf('a bad interval',
    "upstream u { gpu_adaptive interval=5ms; $servers }",
    qr/\[emerg\] \d+#\d+: invalid interval "interval=5ms", it must be from 10ms to 60s/);

bad_conf('a bad interval unit',
    "upstream u { gpu_adaptive interval=fast; $servers }",
    qr/\[emerg\] \d+#\d+: invalid interval "interval=fast"/);

bad_conf('a bad stale time',
    "upstream u { gpu_adaptive stale=0; $servers }",
    qr/\[emerg\] \d+#\d+: invalid stale "stale=0", it must be from 1ms to 1h/);

bad_conf('a coefficient that is no number',
    "upstream u { gpu_adaptive queue_weight=high; $servers }",
    qr/\[emerg\] \d+#\d+: invalid queue_weight "queue_weight=high", it must be a number from 0.000 to 1000.000/);

bad_conf('a negative coefficient',
    "upstream u { gpu_adaptive latency_weight=-1; $servers }",
    qr/\[emerg\] \d+#\d+: invalid latency_weight "latency_weight=-1"/);

bad_conf('a coefficient out of range',
    "upstream u { gpu_adaptive latency_weight=11; $servers }",
    qr/\[emerg\] \d+#\d+: invalid latency_weight "latency_weight=11", it must be a number from 0.000 to 10.000/);

bad_conf('backoff 0',
    "upstream u { gpu_adaptive backoff=0; $servers }",
    qr/\[emerg\] \d+#\d+: invalid backoff "backoff=0", it must be a number from 0.001 to 1.000/);

bad_conf('overload_kv over 1',
    "upstream u { gpu_adaptive overload_kv=1.5; $servers }",
    qr/\[emerg\] \d+#\d+: invalid overload_kv "overload_kv=1.5"/);

bad_conf('too many decimals',
    "upstream u { gpu_adaptive kv_weight=0.0001; $servers }",
    qr/\[emerg\] \d+#\d+: invalid kv_weight "kv_weight=0.0001"/);

bad_conf('overload_queue that is no integer',
    "upstream u { gpu_adaptive overload_queue=1.5; $servers }",
    qr/\[emerg\] \d+#\d+: invalid overload_queue "overload_queue=1.5"/);

bad_conf('a bad zone size',
    "upstream u { gpu_adaptive zone=z:lots; $servers }",
    qr/\[emerg\] \d+#\d+: invalid zone size "zone=z:lots"/);

bad_conf('a zone below 8 pages',
    "upstream u { gpu_adaptive zone=z:4k; $servers }",
    qr/\[emerg\] \d+#\d+: zone "zone=z:4k" is too small/);

bad_conf('an empty zone name',
    "upstream u { gpu_adaptive zone=:64k; $servers }",
    qr/\[emerg\] \d+#\d+: invalid zone name "zone=:64k"/);

bad_conf('a zone too small for its servers',
    "upstream u { gpu_adaptive zone=z:32k; "
    . join(' ', map { "server 127.0.0.1:" . (9000 + $_) . ";" } 1 .. 200)
    . " }",
    qr/\[emerg\] \d+#\d+: gpu_adaptive zone "z" is too small for 200 servers of upstream "u"/);

bad_conf('one zone for two upstreams',
    "upstream u { gpu_adaptive zone=z:64k; $servers }\n"
    . "upstream v { gpu_adaptive zone=z:64k; $servers }",
    qr/\[emerg\] \d+#\d+: gpu_adaptive zone "z" of upstream "v" .* is already used by another upstream/);

bad_conf('twice in one upstream',
    "upstream u { gpu_adaptive; gpu_adaptive; $servers }",
    qr/\[emerg\] \d+#\d+: "gpu_adaptive" directive is duplicate/);

bad_conf('outside an upstream',
    "server { listen 127.0.0.1:8090; gpu_adaptive; }",
    qr/\[emerg\] \d+#\d+: "gpu_adaptive" directive is not allowed here/);

bad_conf('status with an argument',
    "server { listen 127.0.0.1:8090; location = /s { gpu_upstream_status json; } }",
    qr/\[emerg\] \d+#\d+: invalid number of arguments in "gpu_upstream_status"/);

bad_conf('status in an upstream',
    "upstream u { gpu_upstream_status; $servers }",
    qr/\[emerg\] \d+#\d+: "gpu_upstream_status" directive is not allowed here/);

done_testing();

END { remove_tree($tmp) if $tmp && -d $tmp }

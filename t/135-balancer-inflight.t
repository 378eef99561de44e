# gpu_adaptive follows its own live signal, the requests in flight per
# peer (all workers, through the zone), when the effective weights are
# equal: the two random choices are drawn by weight halved for every
# request a peer has in flight more than the least busy one, so the
# emptiest peer is nearly always one of the two.
#
# Three equal fake nodes (plain server blocks, idle X-GPU-Load).  A request
# to /hold/ with "X-Hold-On: a" is held on node a: the other nodes answer
# 404, which the balancer passes to the next peer (a 404 is no failure),
# and node a proxies it to a socket that never answers.  So a test puts
# any number of requests in flight on any node, and hangs up to end them.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;
use IO::Socket::INET;
use JSON::PP ();
use Time::HiRes ();

$ENV{TEST_NGINX_NODE_A} = NgxGpuTest::free_port();
$ENV{TEST_NGINX_NODE_B} = NgxGpuTest::free_port();
$ENV{TEST_NGINX_NODE_C} = NgxGpuTest::free_port();

# accepts connections (the kernel does) and never reads or answers
our $hole = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 128, ReuseAddr => 1)
    or die "black hole: $!";
$ENV{TEST_NGINX_HOLE} = $hole->sockport;

our %port = (a => $ENV{TEST_NGINX_NODE_A}, b => $ENV{TEST_NGINX_NODE_B},
             c => $ENV{TEST_NGINX_NODE_C});
our @held;

sub status {
    my ($st, undef, $body) = NgxGpuTest::http_request('GET', '/status');
    die "status: $st $body" unless $st == 200;
    my %peers;
    for my $p (@{ JSON::PP::decode_json($body)->{upstreams}{pool}{peers} }) {
        for my $n (keys %port) {
            $peers{$n} = $p if $p->{server} eq "127.0.0.1:$port{$n}";
        }
    }
    return \%peers;
}

sub inflight {
    my $s = status();
    return join ' ', map { "$_=$s->{$_}{inflight}" } sort keys %$s;
}

# hold $n requests on node $node; returns once the balancer counts them
sub hold {
    my (%n) = @_;
    my $want = 0;
    for my $node (sort keys %n) {
        for (1 .. $n{$node}) {
            my $s = IO::Socket::INET->new(
                PeerAddr => '127.0.0.1',
                PeerPort => $ENV{TEST_NGINX_SERVER_PORT}
                            // $ENV{TEST_NGINX_PORT},
                Proto => 'tcp', Timeout => 5) or die "connect: $!";
            print $s "GET /hold/ HTTP/1.1\r\nHost: localhost\r\n"
                     . "X-Hold-On: $node\r\n\r\n";
            push @held, $s;
        }
    }
    my $expect = join ' ', map { "$_=" . ($n{$_} // 0) } sort keys %port;
    my $t0 = Time::HiRes::time();
    while (Time::HiRes::time() - $t0 < 5) {
        return if inflight() eq $expect;
        Time::HiRes::sleep(0.02);
    }
    die "in flight: " . inflight() . ", expected $expect";
}

# hang up on the held requests; true once nothing is in flight
sub release {
    close $_ for @held;
    @held = ();
    my $t0 = Time::HiRes::time();
    while (Time::HiRes::time() - $t0 < 5) {
        return 1 if inflight() eq 'a=0 b=0 c=0';
        Time::HiRes::sleep(0.02);
    }
    return 0;
}

# $n requests one after another; returns who answered
sub drive {
    my ($n) = @_;
    my %got = (a => 0, b => 0, c => 0, error => 0);
    for (1 .. $n) {
        my ($st, undef, $body) = NgxGpuTest::http_request('GET', '/v1/x');
        chomp $body;
        $got{$st == 200 && exists $port{$body} ? $body : 'error'}++;
    }
    return \%got;
}

sub shares {
    my ($got) = @_;
    return join ' ', map { "$_=$got->{$_}" } qw(a b c error);
}

master_on();
workers(2);
no_root_location();

add_block_preprocessor(sub {
    my $block = shift;
    my $params = $block->adaptive // '';
    chomp $params;
    $block->set_value('main_config',
        'load_module $TEST_NGINX_GPU_MODULE;')
        unless defined $block->main_config;
    my $nodes = '';
    for my $n (qw(a b c)) {
        my $p = 'TEST_NGINX_NODE_' . uc $n;
        $nodes .= <<"CONF";
server {
    listen 127.0.0.1:\$$p;
    location / {
        add_header X-GPU-Load
            "queue=0,running=0,kv=0.100,latency_ms=40,tpot_ms=1.000" always;
        return 200 "$n\\n";
    }
    location /hold/ {
        if (\$http_x_hold_on != "$n") {
            return 404;
        }
        proxy_pass http://127.0.0.1:\$TEST_NGINX_HOLE;
        proxy_read_timeout 30s;
    }
}
CONF
    }
    $block->set_value('http_config', <<"CONF" . $nodes);
upstream pool {
    gpu_adaptive interval=100ms $params;
    server 127.0.0.1:\$TEST_NGINX_NODE_A;
    server 127.0.0.1:\$TEST_NGINX_NODE_B;
    server 127.0.0.1:\$TEST_NGINX_NODE_C;
    keepalive 8;
}
CONF
    $block->set_value('config', <<'CONF');
location /v1/ {
    proxy_pass http://pool;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
}
location /hold/ {
    proxy_pass http://pool;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_next_upstream http_404;
    proxy_read_timeout 30s;
}
location = /status {
    gpu_upstream_status;
}
CONF
});

no_shuffle();
run_tests();

__DATA__

=== TEST 1: equal peers, A holds two requests: new requests avoid A, whichever worker picks
--- init
main::drive(30);
Time::HiRes::sleep(0.3);
main::hold(a => 2);
my $got = main::drive(60);
Test::More::is($got->{a}, 0, 'A got none (' . main::shares($got) . ')');
Test::More::is($got->{error}, 0, 'every request answered');
Test::More::ok($got->{b} >= 15 && $got->{c} >= 15,
               'B and C share them (' . main::shares($got) . ')');
Test::More::ok(main::release(), 'nothing in flight once the held ones hung '
                                . 'up (' . main::inflight() . ')');
--- request
GET /status
--- response_body_like: "state":"up","weight":1,"effective_weight":[\d.]+,.*"inflight":0,



=== TEST 2: A holds four, B two, C none: C, the least busy, takes nearly all (two choices by weight alone: two thirds)
--- init
main::drive(30);
Time::HiRes::sleep(0.3);
main::hold(a => 4, b => 2);
my $got = main::drive(100);
Test::More::ok($got->{c} >= 90, 'C got ' . $got->{c} . ' of 100 ('
                                 . main::shares($got) . ')');
Test::More::is($got->{a}, 0, 'A got none');
Test::More::is($got->{error}, 0, 'every request answered');
Test::More::ok(main::release(), 'nothing in flight once the held ones hung '
                                . 'up (' . main::inflight() . ')');
--- request
GET /status
--- response_body_like: "requests":\d+,"fails":0,"overloads":0



=== TEST 3: inflight_weight=0: picks by the effective weights only, the held requests count for nothing
--- adaptive
inflight_weight=0
--- init
main::drive(30);
Time::HiRes::sleep(0.3);
main::hold(a => 4, b => 2);
my $got = main::drive(90);
Test::More::ok($got->{$_} >= 15, "$_ got $got->{$_} of 90 ("
                                  . main::shares($got) . ')') for qw(a b c);
Test::More::is($got->{error}, 0, 'every request answered');
Test::More::ok(main::release(), 'nothing in flight once the held ones hung '
                                . 'up (' . main::inflight() . ')');
--- request
GET /status
--- response_body_like: "inflight":0,

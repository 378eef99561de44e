# Continuous batching across nginx workers: 4 workers, 16 concurrent
# requests; the backend runs them in shared forward steps, which the
# batch-size histogram shows, and each gets its own correct answer.
use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use NgxGpuTest;

start_backend(args => ['--device', 'cpu']);

master_on();
workers(4);

add_block_preprocessor { gpu_block_defaults($_[0], <<'CONF') };
location /v1/ {
    gpu_pass unix:$TEST_NGINX_GPU_SOCKET;
}
location = /metrics {
    gpu_metrics;
}
CONF

no_shuffle();
run_tests();

__DATA__

=== TEST 1: 16 concurrent requests, all answered with the story
--- init
my @r = NgxGpuTest::http_concurrent(16, 'POST', '/v1/completions',
    '{"prompt":[1],"max_tokens":200,"temperature":0}');
my $good = grep { $_->[0] == 200
    && $_->[1] =~ /"text":"Once upon a time, there was a little girl named Lily\./
    && $_->[1] =~ /"completion_tokens":\d+/ } @r;
Test::More::is($good, 16, "16 of 16 concurrent requests got the story");
--- request
GET /metrics
--- error_code: 200
--- response_body_like chomp
ngx_gpu_batch_size_bucket\{model="stories260K",le="1"\} (\d+)\n.*ngx_gpu_batch_size_bucket\{model="stories260K",le="\+Inf"\} (?!\1\n)\d+\n

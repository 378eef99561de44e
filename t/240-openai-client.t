# The official openai Python client, unchanged, against ngx-gpu:
# completions and chat, streaming and not, stop, logprobs (OpenAI's shapes
# parsed by the client), top_k and penalties, errors
# (t/openai_client_test.py).  On the scripted byte-level model when
# ../shared is there (answers checked word for word), else on the random
# tiny model with the ChatML template forced (shapes only).
use lib 't/lib';
use Test::More;
use NgxGpuTest;

my $py = 'build/venv/bin/python';
if (!-x $py || system("$py -c 'import openai' 2>/dev/null") != 0) {
    plan skip_all => 'the openai client is not in build/venv '
        . '(scripts/install-deps --test)';
}

my ($model, $name, @expect);
my $qwen = ($ENV{NGX_GPU_SHARED} // '../shared')
           . '/models/qwen3-tokenizer/tokenizer.json';
if (-f $qwen && system("$py -c 'import tokenizers, jinja2' 2>/dev/null") == 0)
{
    require NgxGpuScripted;
    $model = NgxGpuScripted::scripted_model_or_skip();
    $name = 'scripted-qwen3';
    @expect = ("$model/script.json");
    start_backend(model => $model, args => ['--device', 'cpu']);
} else {
    diag("../shared absent: the random tiny model, shapes only");
    $model = $ENV{TEST_NGINX_GPU_RANDOM_MODEL};
    plan skip_all => "no model: $model (make models)"
        unless -f "$model/config.json";
    $name = 'ngx-gpu-random-tiny';
    start_backend(model => $model,
                  args => ['--device', 'cpu', '--chat-template', 'chatml']);
}

my $port = start_gpu_nginx();

my $out = qx{$py t/openai_client_test.py http://127.0.0.1:$port/v1 $name @expect 2>&1};
my $ran = 0;
for my $line (split /\n/, $out) {
    if ($line =~ /^(not )?ok - (.*)/) {
        ok(!$1, "openai client: $2");
        $ran++;
    }
}
ok($out =~ /^(\d+) passed, 0 failed$/m, "the client script ran to its end")
    or diag($out);
ok($ran >= 10, "all the client checks ran ($ran)");
diag($out) if $out =~ /not ok/;

done_testing();

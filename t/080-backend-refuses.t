# The backend refuses to start, with a message naming the file and the
# problem, on a corrupt or truncated safetensors file or a config.json it
# does not support; the supervisor does not restart it in a loop.
# (No nginx here: this is the backend's start-up contract.)
use strict;
use warnings;
use lib 't/lib';
use File::Copy qw(copy);
use File::Path qw(make_path remove_tree);
use Test::More;
use NgxGpuTest ();

my $model = NgxGpuTest::model_dir_or_skip();
my $bin = $ENV{TEST_NGINX_GPU_BACKEND} or die "run through t/run\n";
my $tmp = "/tmp/ngx-gpu-refuse-$$";

sub model_copy {
    my ($name) = @_;
    my $d = "$tmp/$name";
    make_path($d);
    copy("$model/$_", "$d/$_") or die "copy $_: $!"
        for qw(config.json model.safetensors tokenizer.json);
    return $d;
}

sub start {
    my ($dir) = @_;
    my $out = `timeout 20 $bin --model $dir --socket $tmp/s.sock --device cpu 2>&1`;
    return ($? >> 8, $out);
}

sub edit {
    my ($file, $fn) = @_;
    open my $fh, '<:raw', $file or die; local $/; my $c = <$fh>; close $fh;
    $c = $fn->($c);
    open $fh, '>:raw', $file or die; print $fh $c; close $fh;
}

# truncated weights
my $d = model_copy('truncated');
truncate("$d/model.safetensors", (-s "$d/model.safetensors") - 1000) or die;
my ($rc, $out) = start($d);
is($rc, 78, 'truncated safetensors: exit status 78 (EX_CONFIG)');
like($out, qr{model\.safetensors.*(truncat|exceed|size)}i,
     'truncated safetensors: the message names the file and the problem')
    or diag($out);
unlike($out, qr/; restarting/, 'no restart loop');

# garbage header
$d = model_copy('garbage');
edit("$d/model.safetensors", sub { my $c = shift; substr($c, 8, 20) = 'x' x 20; $c });
($rc, $out) = start($d);
is($rc, 78, 'corrupt header: exit status 78');
like($out, qr{model\.safetensors}, 'corrupt header: names the file') or diag($out);

# header length beyond the file
$d = model_copy('hdrlen');
edit("$d/model.safetensors", sub { my $c = shift; substr($c, 0, 8) = pack('Q<', 1 << 40); $c });
($rc, $out) = start($d);
is($rc, 78, 'header length beyond the file: exit status 78');
like($out, qr{model\.safetensors}, 'header length: names the file') or diag($out);

# unsupported architecture
$d = model_copy('arch');
edit("$d/config.json", sub { my $c = shift; $c =~ s/LlamaForCausalLM/MambaForCausalLM/; $c });
($rc, $out) = start($d);
is($rc, 78, 'unsupported architecture: exit status 78');
like($out, qr{config\.json.*MambaForCausalLM}s, 'names config.json and the architecture')
    or diag($out);

# a tensor with the wrong shape for the config
$d = model_copy('shape');
edit("$d/config.json", sub { my $c = shift; $c =~ s/"intermediate_size": 172/"intermediate_size": 128/; $c });
($rc, $out) = start($d);
is($rc, 78, 'shape mismatch: exit status 78');
like($out, qr{gate_proj}, 'names the tensor') or diag($out);

# missing file
($rc, $out) = start("$tmp/nothing-here");
is($rc, 78, 'missing model directory: exit status 78');
like($out, qr{nothing-here}, 'names the path') or diag($out);

# and the real model starts (the test above is not vacuous)
my $pid = fork();
if ($pid == 0) {
    open STDOUT, '>', "$tmp/ok.log" or die;
    open STDERR, '>&', \*STDOUT or die;
    exec($bin, '--model', $model, '--socket', "$tmp/ok.sock", '--device',
         'cpu', '--no-supervise') or die "exec: $!";
}
my $ok = 0;
for (1 .. 100) {
    select(undef, undef, undef, 0.05);
    if (-S "$tmp/ok.sock" && `cat $tmp/ok.log` =~ /serving/) { $ok = 1; last }
}
kill 'TERM', $pid;
waitpid($pid, 0);
ok($ok, 'the unmodified model starts and serves');

remove_tree($tmp);
done_testing();

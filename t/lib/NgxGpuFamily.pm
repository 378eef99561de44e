package NgxGpuFamily;

# NgxGpuFamily - the Hugging Face logit fixtures (t/fixtures/hf-logits,
# scripts/make-logit-refs) made servable, for the end-to-end suites:
#
#   family_model($fixture_dir, $out_dir)
#       a model directory at $out_dir (under the test's temp dir, never in
#       the repo) with the fixture's config.json and model.safetensors
#       (symlinked), a BPE tokenizer.json that fills exactly the
#       fixture's vocabulary, and the family's tokenizer_config.json (chat
#       template from t/unit/chat: Qwen2 -> chatml, GLM / GLM-4 -> glm4,
#       Llama-3 -> llama3).  Returns { dir, family, template, eos (the
#       config's first EOS id), n_special (ids below are special), text => [id -> decoded text], id => { text
#       -> id } }: every id decodes to a distinct ASCII string (so a
#       logprobs map keyed by token text names one id).
#   read_refs($path)
#       refs.bin (layout in t/unit/hf_refs.h): { vocab, n_decode, seqs =>
#       [{ n_prompt, tokens => [..], rows => [[logits] x n_decode + 1] }] }
#   log_softmax(\@logits)
#   start_nginx(NAME => socket, ...)
#       nginx on a free port, a location /NAME/v1/ per backend; returns
#       the port.  Stopped at exit.

use strict;
use warnings;

use Exporter 'import';
use File::Path qw(make_path remove_tree);
use File::Spec;
use IO::Socket::INET;
use JSON::PP ();
use POSIX ();

our @EXPORT = qw(family_of family_model read_refs log_softmax start_nginx);

# chat tokens of each family; ids 1 and 2 are the fixtures' BOS and EOS
my %SPECIALS = (
    qwen2 => ['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
    glm   => ['[gMASK]', '<sop>', '<|endoftext|>', '<|system|>', '<|user|>',
              '<|assistant|>', '<|observation|>'],
    llama3 => ['<|end_of_text|>', '<|begin_of_text|>', '<|eot_id|>',
               '<|start_header_id|>', '<|end_header_id|>'],
);
my %TEMPLATE = (qwen2 => 'chatml', glm => 'glm4', llama3 => 'llama3');

my ($nginx_pid, $nginx_dir);


# the family of a fixture, from its name; undef for the plain Llamas
sub family_of {
    my ($name) = @_;
    return $name =~ /^qwen2-/ ? 'qwen2'
         : $name =~ /^glm4?-/ ? 'glm'
         : $name =~ /^llama3rope-/ ? 'llama3'
         : undef;
}


sub family_model {
    my ($fixture, $out) = @_;
    my (undef, undef, $name) = File::Spec->splitpath($fixture);
    my $family = family_of($name) or die "$name: no known family\n";
    my $json = JSON::PP->new->utf8->canonical;

    my $cfg = $json->decode(slurp("$fixture/config.json"));
    my $vocab = $cfg->{vocab_size};
    # SentencePiece-style BPE (Llama-2's layout, no byte fallback: a
    # byte-level one needs all 256 byte pieces, more than these
    # vocabularies hold): the family's specials and <unk>, U+2581 for
    # the space, tab, newline and printable ASCII, then merges
    # ("\x{2581}a".."\x{2581}z", then letter pairs) up to the vocab
    my $sp = "\x{2581}";
    my @specials = (@{ $SPECIALS{$family} }, '<unk>');
    my @pieces = (@specials, $sp, "\t", "\n", map { chr } 33 .. 126);
    my @merges;
    my @firsts = ($sp, split //, 'etaoinshrdlcumwfgypbvkjxqz');
    my @seconds = split //, 'abcdefghijklmnopqrstuvwxyz';
    for my $a (@firsts) {
        for my $b (@seconds) {
            last if @pieces >= $vocab;
            push @pieces, "$a$b";
            push @merges, "$a $b";
        }
    }
    die "$name: vocab $vocab is too small for a tokenizer\n"
        if @pieces != $vocab;

    my %vocab_map = map { $pieces[$_] => $_ } 0 .. $#pieces;
    my @added = map {
        { id => $_, content => $specials[$_], single_word => JSON::PP::false,
          lstrip => JSON::PP::false, rstrip => JSON::PP::false,
          normalized => JSON::PP::false, special => JSON::PP::true }
    } 0 .. $#specials;
    my $post;
    if ($family eq 'llama3') {
        # Llama-3 starts every text with <|begin_of_text|>
        my $bos = $specials[1];
        $post = { type => 'TemplateProcessing',
                  single => [{ SpecialToken => { id => $bos, type_id => 0 } },
                             { Sequence => { id => 'A', type_id => 0 } }],
                  pair => [{ SpecialToken => { id => $bos, type_id => 0 } },
                           { Sequence => { id => 'A', type_id => 0 } },
                           { SpecialToken => { id => $bos, type_id => 1 } },
                           { Sequence => { id => 'B', type_id => 1 } }],
                  special_tokens => { $bos => { id => $bos, ids => [1],
                                                tokens => [$bos] } } };
    }
    my $tok = {
        version => '1.0', truncation => undef, padding => undef,
        added_tokens => \@added,
        normalizer => { type => 'Sequence', normalizers => [
            { type => 'Prepend', prepend => $sp },
            { type => 'Replace', pattern => { String => ' ' },
              content => $sp }] },
        pre_tokenizer => undef, post_processor => $post,
        decoder => { type => 'Sequence', decoders => [
            { type => 'Replace', pattern => { String => $sp },
              content => ' ' },
            { type => 'Fuse' }] },
        model => { type => 'BPE', dropout => undef, unk_token => '<unk>',
                   continuing_subword_prefix => undef,
                   end_of_word_suffix => undef, fuse_unk => JSON::PP::true,
                   byte_fallback => JSON::PP::false,
                   ignore_merges => JSON::PP::false,
                   vocab => \%vocab_map, merges => \@merges },
    };

    remove_tree($out) if -d $out;
    make_path($out);
    for my $f ('config.json', 'model.safetensors') {
        symlink(File::Spec->rel2abs("$fixture/$f"), "$out/$f")
            or die "symlink $out/$f: $!";
    }
    spew("$out/tokenizer.json", $json->encode($tok));
    my $tc = "t/unit/chat/$TEMPLATE{$family}/tokenizer_config.json";
    spew("$out/tokenizer_config.json", slurp($tc));

    my @text = map { my $t = $_; $t =~ s/$sp/ /g; $t } @pieces;
    my %id = map { $text[$_] => $_ } 0 .. $#text;
    die "$name: token texts are not distinct\n" if keys %id != @text;
    my $eos = $cfg->{eos_token_id};
    return { dir => $out, family => $family, n_special => scalar @specials,
             eos => ref $eos ? $eos->[0] : $eos,
             template => $TEMPLATE{$family}, text => \@text, id => \%id };
}


sub read_refs {
    my ($path) = @_;
    my $raw = slurp($path);
    my ($magic, $n, $vocab, $nd) = unpack 'a8 l< l< l<', $raw;
    die "$path: not a refs file\n" unless $magic eq 'NGXREFS1';
    my $at = 20;
    my @seqs;
    for (1 .. $n) {
        my $np = unpack 'l<', substr($raw, $at, 4);
        $at += 4;
        my @tokens = unpack 'l<*', substr($raw, $at, 4 * ($np + $nd));
        $at += 4 * ($np + $nd);
        my @rows;
        for (0 .. $nd) {
            push @rows, [unpack 'f<*', substr($raw, $at, 4 * $vocab)];
            $at += 4 * $vocab;
        }
        push @seqs, { n_prompt => $np, tokens => \@tokens, rows => \@rows };
    }
    die "$path: $at of " . length($raw) . " bytes read\n"
        if $at != length $raw;
    return { vocab => $vocab, n_decode => $nd, seqs => \@seqs };
}


sub log_softmax {
    my ($x) = @_;
    my $max = $x->[0];
    $_ > $max and $max = $_ for @$x;
    my $sum = 0;
    $sum += exp($_ - $max) for @$x;
    my $lse = $max + log $sum;
    return [map { $_ - $lse } @$x];
}


sub start_nginx {
    my (%loc) = @_;
    my $l = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0) or die "no free port: $!";
    my $port = $l->sockport;
    close $l;
    $nginx_dir = "/tmp/ngx-gpu-nginx-$$";
    make_path("$nginx_dir/logs");
    my $locs = join '', map {
        "        location /$_/v1/ { gpu_pass unix:$loc{$_}; }\n"
    } sort keys %loc;
    spew("$nginx_dir/nginx.conf", <<"CONF");
load_module $ENV{TEST_NGINX_GPU_MODULE};
daemon off;
master_process off;
error_log $nginx_dir/logs/error.log info;
pid $nginx_dir/logs/nginx.pid;
events { worker_connections 64; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$port;
$locs    }
}
CONF
    $nginx_pid = fork() // die "fork: $!";
    if ($nginx_pid == 0) {
        exec $ENV{TEST_NGINX_BINARY} // 'nginx', '-p', $nginx_dir, '-c',
             "$nginx_dir/nginx.conf" or die "exec nginx: $!";
    }
    for (1 .. 200) {
        return $port if IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port");
        select(undef, undef, undef, 0.05);
    }
    die "nginx did not start:\n" . (eval { slurp("$nginx_dir/logs/error.log") }
                                    // '');
}


sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or die "$path: $!";
    local $/;
    return <$fh>;
}


sub spew {
    my ($path, $data) = @_;
    open my $fh, '>:raw', $path or die "$path: $!";
    print $fh $data;
    close $fh or die "$path: $!";
}


END {
    local $?;
    if ($nginx_pid) {
        kill 'TERM', $nginx_pid;
        waitpid($nginx_pid, 0);
    }
    remove_tree($nginx_dir)
        if $nginx_dir && -d $nginx_dir && !$ENV{TEST_NGINX_NO_CLEAN};
}

1;

package NgxGpuScripted;

# NgxGpuScripted - the scripted byte-level model of the chat and
# streaming suites: the Qwen3 tokenizer from ../shared with weights that
# make it always answer one known text (scripts/make-scripted-model).
# Made into build/models/scripted-qwen3 on first use; the suites that
# need it skip visibly without ../shared or the Python oracles.

use strict;
use warnings;

use Exporter 'import';
use JSON::PP ();

our @EXPORT = qw(scripted_model_or_skip scripted_text hf_chat_tokens
                 hf_text_tokens);

our $PY = 'build/venv/bin/python';
our $DIR = 'build/models/scripted-qwen3';
my $QWEN = ($ENV{NGX_GPU_SHARED} // '../shared') . '/models/qwen3-tokenizer';


sub scripted_model_or_skip {
    if (!-f "$QWEN/tokenizer.json") {
        Test::More->builder->skip_all("$QWEN is absent: the byte-level "
            . "tokenizer and the Qwen3 chat template need ../shared");
    }
    if (!-x $PY || system("$PY -c 'import tokenizers, jinja2' 2>/dev/null")) {
        Test::More->builder->skip_all("build/venv lacks tokenizers or jinja2 "
            . "(scripts/install-deps --test)");
    }
    if (!-f "$DIR/script.json"
        || -M "$DIR/script.json" > -M 'scripts/make-scripted-model')
    {
        system($PY, 'scripts/make-scripted-model', '--tokenizer', $QWEN,
               '--out', $DIR) == 0
            or die "scripts/make-scripted-model failed\n";
    }
    return $DIR;
}


# the text the model says, as Perl characters
sub scripted_text {
    open my $fh, '<:raw', "$DIR/script.json" or die "$DIR/script.json: $!";
    my $j = JSON::PP->new->utf8->decode(do { local $/; <$fh> });
    return $j->{text};
}


# prompt_tokens of HF's apply_chat_template for a JSON message list
sub hf_chat_tokens {
    my ($messages) = @_;
    open(my $fh, '-|', $PY, 'scripts/chat-oracle', $DIR, $messages)
        or die "chat-oracle: $!";
    my $out = do { local $/; <$fh> };
    close $fh;
    $out =~ /"prompt_tokens": (\d+)/ or die "chat-oracle: $out\n";
    return $1;
}


# HF's token count of a text (no specials added: Qwen has none)
sub hf_text_tokens {
    my ($text) = @_;
    open(my $fh, '-|', $PY, '-c', 'import sys; from tokenizers import '
         . 'Tokenizer; t = Tokenizer.from_file(sys.argv[1]); '
         . 'print(len(t.encode(sys.argv[2]).ids))', "$DIR/tokenizer.json",
         $text) or die "tokenizers: $!";
    my $n = <$fh>;
    close $fh;
    chomp $n;
    return $n;
}

1;

# Sampling fields on both endpoints against the real backend (stories260K
# on the CPU engine): top_k, presence/frequency penalties, logprobs
# (completions' integer form, chat's logprobs + top_logprobs), streamed
# and not.  A script rather than data blocks: each check compares several
# answers with each other (the 400s are blocks: t/255).  The checks are
# deterministic: greedy and top_k 1 agree, the penalised greedy token is
# the best of the raw alternatives after the penalty, logprobs are the
# raw distribution's (sorted, the greedy token first, summing to <= 1),
# streamed logprobs are the plain answer's.  Then, on the scripted
# byte-level model (t/230's, when ../shared is there): text_offset counts
# characters, a token inside a split character gets that character's
# offset, and a stop string leaves out the entries of the tokens it cut
# away (both endpoints, streamed and not), while usage counts them; and
# a model whose answer has a 39-byte token is served (it crashed the
# backend once).
use lib 't/lib';
use Test::More;
use JSON::PP;
use Encode ();
use File::Temp ();
use NgxGpuTest;

my $model = model_dir_or_skip();
start_backend(args => ['--device', 'cpu', '--chat-template', 'chatml',
                       '--max-logprobs', '10', '--logprobs-tokens', '64']);

our $port = start_gpu_nginx();

my $json = JSON::PP->new->utf8->canonical;

sub post {
    my ($path, $req) = @_;
    my ($st, undef, $body) = http_request('POST', $path,
                                          $json->encode($req), port => $port);
    my $obj = eval { $json->decode($body) };
    return ($st, $obj, $body);
}

# the events of a stream, decoded, and whether it ended with [DONE]
sub stream {
    my ($path, $req) = @_;
    my ($st, undef, $body) = http_request('POST', $path,
                                          $json->encode($req), port => $port);
    my @ev;
    for my $line (split /\n\n/, $body) {
        next unless $line =~ s/^data: //;
        next if $line eq '[DONE]';
        push @ev, $json->decode($line);
    }
    return ($st, \@ev, $body =~ /data: \[DONE\]\n\n$/);
}

my %cmpl = (prompt => 'Once upon a time', max_tokens => 24);
my @msgs = ({ role => 'user', content => 'Tell me a story.' });

# --- top_k -----------------------------------------------------------------

my ($st, $greedy) = post('/v1/completions', { %cmpl, temperature => 0 });
is($st, 200, 'greedy answer');
my $gtext = $greedy->{choices}[0]{text};
for my $seed (1, 2, 3) {
    my (undef, $r) = post('/v1/completions', { %cmpl, temperature => 1.5,
                                                top_k => 1, seed => $seed });
    is($r->{choices}[0]{text}, $gtext, "top_k 1 at temperature 1.5 is "
       . "greedy (seed $seed)");
}
for my $k (0, -1) {
    my (undef, $a) = post('/v1/completions', { %cmpl, top_k => $k,
                                                seed => 9 });
    my (undef, $b) = post('/v1/completions', { %cmpl, seed => 9 });
    is($a->{choices}[0]{text}, $b->{choices}[0]{text},
       "top_k $k is off: the answer without it");
}

# top_k 5 with logprobs 5: every sampled token is among the raw top 5
{
    my (undef, $r) = post('/v1/completions', { %cmpl, top_k => 5,
                          temperature => 1.3, seed => 11, logprobs => 5 });
    my $lp = $r->{choices}[0]{logprobs};
    my $in = 0;
    for my $i (0 .. $#{ $lp->{tokens} }) {
        my %top = %{ $lp->{top_logprobs}[$i] };
        my @best = (sort { $top{$b} <=> $top{$a} } keys %top)[0 .. 4];
        $in++ if grep { defined && $_ eq $lp->{tokens}[$i] } @best;
    }
    is($in, $r->{usage}{completion_tokens},
       'top_k 5: every token among the 5 most likely');
    my (undef, $again) = post('/v1/completions', { %cmpl, top_k => 5,
                              temperature => 1.3, seed => 11 });
    is($again->{choices}[0]{text}, $r->{choices}[0]{text},
       'top_k with a seed replays');
}

# --- logprobs (completions) --------------------------------------------------

my ($lst, $lr) = post('/v1/completions', { %cmpl, temperature => 0,
                                           logprobs => 3 });
is($lst, 200, 'completions with logprobs 3');
my $lp = $lr->{choices}[0]{logprobs};
my $n = $lr->{usage}{completion_tokens};
is($lr->{choices}[0]{text}, $gtext, 'logprobs do not change the answer');
is(scalar @{ $lp->{tokens} }, $n, 'a token per completion token');
is(scalar @{ $lp->{token_logprobs} }, $n, 'a logprob per token');
is(scalar @{ $lp->{top_logprobs} }, $n, 'alternatives per token');
is(join('', @{ $lp->{tokens} }), $gtext, 'the tokens spell the text');
{
    my ($ok_max, $ok_n, $ok_off, $ok_sum) = (0, 0, 1, 0);
    my $off = 0;
    for my $i (0 .. $n - 1) {
        my %top = %{ $lp->{top_logprobs}[$i] };
        my ($max) = sort { $b <=> $a } values %top;
        $ok_max++ if $lp->{token_logprobs}[$i] == $max
                     && $top{ $lp->{tokens}[$i] } == $max;
        $ok_n++ if keys %top == 3;
        $ok_off = 0 if $lp->{text_offset}[$i] != $off;
        $off += length($lp->{tokens}[$i]);
        my $s = 0;
        $s += exp($_) for values %top;
        $ok_sum++ if $s <= 1 + 1e-5 && $s > 0;
    }
    is($ok_max, $n, 'greedy: the token\'s logprob is the largest');
    is($ok_n, $n, 'three alternatives each');
    ok($ok_off, 'text_offset: where each token starts');
    is($ok_sum, $n, 'alternatives hold at most all of the probability');
}
{
    my (undef, $z) = post('/v1/completions', { %cmpl, temperature => 0,
                                               logprobs => 0 });
    my $zl = $z->{choices}[0]{logprobs};
    is_deeply($zl->{token_logprobs}, $lp->{token_logprobs},
              'logprobs 0: the same token logprobs');
    ok(!grep({ keys %$_ != 1 } @{ $zl->{top_logprobs} }),
       'logprobs 0: only the chosen token among the alternatives');
}
{
    # logprobs are the model's, before temperature and penalties
    my (undef, $t) = post('/v1/completions', { %cmpl, prompt => 'Once',
                          max_tokens => 1, temperature => 0.3,
                          presence_penalty => 1, logprobs => 5 });
    my (undef, $u) = post('/v1/completions', { %cmpl, prompt => 'Once',
                          max_tokens => 1, temperature => 0,
                          logprobs => 5 });
    is_deeply($t->{choices}[0]{logprobs}{top_logprobs},
              $u->{choices}[0]{logprobs}{top_logprobs},
              'alternatives do not depend on temperature or penalties');
}

# streamed: the same logprobs, token by token
{
    my ($sst, $ev, $done) = stream('/v1/completions', { %cmpl,
                                   temperature => 0, logprobs => 3,
                                   stream => JSON::PP::true });
    is($sst, 200, 'streamed with logprobs');
    ok($done, 'ends with [DONE]');
    my (@tok, @lps, @off);
    for my $e (@$ev) {
        my $l = $e->{choices}[0]{logprobs} or next;
        push @tok, @{ $l->{tokens} };
        push @lps, @{ $l->{token_logprobs} };
        push @off, @{ $l->{text_offset} };
    }
    is_deeply(\@tok, $lp->{tokens}, 'streamed tokens as the plain answer');
    is_deeply(\@lps, $lp->{token_logprobs}, 'streamed logprobs as well');
    is_deeply(\@off, $lp->{text_offset}, 'streamed offsets as well');
}

# --- penalties ----------------------------------------------------------------

{
    my (undef, $g) = post('/v1/completions', { %cmpl, temperature => 0,
                          max_tokens => 64 });
    my (undef, $p) = post('/v1/completions', { %cmpl, temperature => 0,
                          max_tokens => 64, presence_penalty => 2,
                          frequency_penalty => 2, logprobs => 5 });
    my $pl = $p->{choices}[0]{logprobs};
    isnt($p->{choices}[0]{text}, $g->{choices}[0]{text},
         'penalties change a long answer');
    # each token is the best raw alternative after the penalty: raw
    # logprob - (2 + 2 * count) for tokens already generated
    my (%count, $good);
    for my $i (0 .. $#{ $pl->{tokens} }) {
        my %top = %{ $pl->{top_logprobs}[$i] };
        my $pen = sub {
            my $t = shift;
            return $top{$t} - ($count{$t} ? 2 + 2 * $count{$t} : 0);
        };
        my $me = $pen->($pl->{tokens}[$i]);
        $good++ unless grep { $pen->($_) > $me + 1e-4 } keys %top;
        $count{ $pl->{tokens}[$i] }++;
    }
    is($good, scalar @{ $pl->{tokens} },
       'penalised greedy: each token the best alternative after penalties');

    my (undef, $neg) = post('/v1/completions', { %cmpl, temperature => 0,
                            frequency_penalty => -2 });
    ok($neg->{choices}[0]{text} ne $gtext, 'a negative penalty changes it');
}

# --- chat ----------------------------------------------------------------------

{
    my ($cst, $r) = post('/v1/chat/completions', { messages => \@msgs,
                          max_tokens => 12, temperature => 0,
                          logprobs => JSON::PP::true, top_logprobs => 10 });
    is($cst, 200, 'chat with logprobs');
    my $content = $r->{choices}[0]{logprobs}{content};
    is(scalar @$content, $r->{usage}{completion_tokens},
       'chat: an entry per completion token');
    my ($good, $sorted, $bytes) = (0, 0, 0);
    for my $e (@$content) {
        my @top = @{ $e->{top_logprobs} };
        $good++ if @top == 10 && $top[0]{token} eq $e->{token}
                   && $top[0]{logprob} == $e->{logprob};
        $sorted++ unless grep { $top[$_]{logprob} > $top[$_ - 1]{logprob} }
                         1 .. $#top;
        $bytes++ if Encode::decode_utf8(pack('C*', @{ $e->{bytes} }))
                    eq $e->{token};
    }
    is($good, scalar @$content, 'chat greedy: the token leads its 10');
    is($sorted, scalar @$content, 'chat: alternatives most likely first');
    is($bytes, scalar @$content, 'chat: bytes are the token\'s UTF-8');
    is(join('', map { $_->{token} } @$content),
       $r->{choices}[0]{message}{content}, 'chat: tokens spell the answer');

    my ($sst, $ev, $done) = stream('/v1/chat/completions', {
        messages => \@msgs, max_tokens => 12, temperature => 0,
        logprobs => JSON::PP::true, top_logprobs => 2,
        stream => JSON::PP::true,
        stream_options => { include_usage => JSON::PP::true } });
    my @got;
    for my $e (@$ev) {
        next unless @{ $e->{choices} // [] };
        my $l = $e->{choices}[0]{logprobs} or next;
        push @got, @{ $l->{content} };
    }
    ok($done, 'chat stream with logprobs ends with [DONE]');
    is(scalar @got, $r->{usage}{completion_tokens},
       'chat stream: every token\'s logprobs once');
    is_deeply([map { $_->{logprob} } @got],
              [map { $_->{logprob} } @$content],
              'chat stream: the plain answer\'s logprobs');

    my (undef, $no) = post('/v1/chat/completions', { messages => \@msgs,
                           max_tokens => 2, logprobs => JSON::PP::false });
    is($no->{choices}[0]{logprobs}, undef, 'logprobs false: null');
    my (undef, $zero) = post('/v1/chat/completions', { messages => \@msgs,
                             max_tokens => 2, logprobs => JSON::PP::true });
    ok(!grep({ @{ $_->{top_logprobs} } } @{ $zero->{choices}[0]{logprobs}
                                            {content} }),
       'logprobs without top_logprobs: no alternatives');
}

# --- a byte-level model: split characters, stop strings ---------------------

SKIP: {
    my $py = 'build/venv/bin/python';
    my $qwen = ($ENV{NGX_GPU_SHARED} // '../shared')
               . '/models/qwen3-tokenizer/tokenizer.json';
    skip('../shared or build/venv\'s tokenizers and jinja2 are absent: no '
         . 'byte-level checks', 1)
        unless -f $qwen && -x $py
               && system("$py -c 'import tokenizers, jinja2' 2>/dev/null")
                  == 0;

    require NgxGpuScripted;
    my $smodel = NgxGpuScripted::scripted_model_or_skip();
    start_backend(name => 'b', model => $smodel, args => ['--device', 'cpu']);
    local $port = start_gpu_nginx(name => 'b');

    my $text = NgxGpuScripted::scripted_text();
    my @hi = ({ role => 'user', content => 'hi' });
    my $t = JSON::PP::true;

    # every token's exact bytes, from chat's logprobs
    my $token_bytes = sub {
        my (undef, $c) = post('/v1/chat/completions', { messages => \@hi,
                              max_tokens => 40, logprobs => $t });
        return map { pack('C*', @{ $_->{bytes} }) }
                   @{ $c->{choices}[0]{logprobs}{content} };
    };
    my @bytes = $token_bytes->();
    is(Encode::decode_utf8(join('', @bytes)), $text,
       'byte-level: the chat tokens\' bytes spell the answer');

    # per token, the characters complete before it (not a split one's)
    my $offsets = sub {
        my @b = @_;
        return map {
            my $s = join('', @b[0 .. $_ - 1]);
            length(Encode::decode('UTF-8', $s, Encode::FB_QUIET));
        } 0 .. $#b;
    };
    my @want = $offsets->(@bytes);

    my ($st, $r) = post('/v1/completions', { prompt => 'hi',
                        max_tokens => 40, logprobs => 1 });
    my $l = $r->{choices}[0]{logprobs};
    is($st, 200, 'byte-level completions with logprobs');
    is($r->{choices}[0]{text}, $text, 'byte-level: the scripted text');
    is($r->{usage}{completion_tokens}, scalar @bytes,
       'byte-level: a token per byte string');
    is_deeply($l->{text_offset}, \@want, 'text_offset counts characters; '
              . 'a token inside a split character gets its offset');
    my $llama = index($text, "\x{1f999}");
    is(scalar(grep { $_ == $llama } @{ $l->{text_offset} }), 2,
       'the two tokens that end the llama emoji start at it');
    ok($l->{text_offset}[0] == 0
       && !grep({ $l->{text_offset}[$_] < $l->{text_offset}[$_ - 1]
                  || $l->{text_offset}[$_] > length $text } 1 .. $#want),
       'offsets from 0, in order, within the text');

    my ($sst, $ev, $done) = stream('/v1/completions', { prompt => 'hi',
                                   max_tokens => 40, logprobs => 1,
                                   stream => $t });
    my ($stext, $inside, @soff, @stok) = ('', 1);
    for my $e (@$ev) {
        $stext .= $e->{choices}[0]{text};
        my $el = $e->{choices}[0]{logprobs} or next;
        $inside = 0 if grep { $_ >= length $stext } @{ $el->{text_offset} };
        push @soff, @{ $el->{text_offset} };
        push @stok, @{ $el->{tokens} };
    }
    ok($done && $stext eq $text, 'byte-level stream: the text');
    is_deeply(\@soff, \@want, 'byte-level stream: the same offsets');
    is_deeply(\@stok, $l->{tokens}, 'byte-level stream: the same tokens');
    ok($inside, 'byte-level stream: a token\'s entry comes with the '
       . 'chunk that holds its start (a split character\'s with it whole)');

    # a stop string cuts tokens away: their entries go, usage counts them
    for my $stop ("\x{4f60}\x{597d}\x{4e16}\x{754c},", "ays \x{4f60}") {
        my $cut = substr($text, 0, index($text, $stop));
        my $sb = Encode::encode_utf8($stop);
        my ($gen, $kept) = (0, 0);
        $gen++ until $gen > @bytes
                     || index(join('', @bytes[0 .. $gen - 1]), $sb) >= 0;
        $kept++ while $kept < @bytes && $want[$kept] < length $cut;
        my %req = (prompt => 'hi', max_tokens => 40, stop => $stop,
                   logprobs => 2);

        my (undef, $s) = post('/v1/completions', \%req);
        my $sl = $s->{choices}[0]{logprobs};
        is($s->{choices}[0]{text}, $cut, "stop \"$stop\": the text before "
           . 'it');
        is($s->{usage}{completion_tokens}, $gen, "stop \"$stop\": usage "
           . "counts the $gen tokens generated");
        is(scalar @{ $sl->{tokens} }, $kept, "stop \"$stop\": entries for "
           . "the $kept tokens that start in the text");
        is_deeply($sl->{text_offset}, [@want[0 .. $kept - 1]],
                  "stop \"$stop\": their offsets, all within the text");
        is(scalar @{ $sl->{top_logprobs} } + @{ $sl->{token_logprobs} },
           2 * $kept, "stop \"$stop\": every list as long");

        my (undef, $sev, $sdone) = stream('/v1/completions', { %req,
            stream => $t, stream_options => { include_usage => $t } });
        my ($txt, $n, @o, @k) = ('', 0);
        for my $e (@$sev) {
            $n = $e->{usage}{completion_tokens} if $e->{usage};
            my $ch = $e->{choices}[0] or next;
            $txt .= $ch->{text};
            my $cl = $ch->{logprobs} or next;
            push @o, @{ $cl->{text_offset} };
            push @k, @{ $cl->{tokens} };
        }
        ok($sdone && $txt eq $cut && $n == $gen,
           "stop \"$stop\" streamed: the text, usage $gen");
        is_deeply(\@o, [@want[0 .. $kept - 1]],
                  "stop \"$stop\" streamed: the entries of those $kept");
        is_deeply(\@k, $sl->{tokens},
                  "stop \"$stop\" streamed: the same tokens");

        my %chat = (messages => \@hi, max_tokens => 40, stop => $stop,
                    logprobs => $t, top_logprobs => 1);
        my (undef, $h) = post('/v1/chat/completions', \%chat);
        my $hc = $h->{choices}[0]{logprobs}{content};
        is($h->{choices}[0]{message}{content}, $cut,
           "chat stop \"$stop\": the text before it");
        is($h->{usage}{completion_tokens}, $gen,
           "chat stop \"$stop\": usage counts every token");
        is_deeply([map { pack('C*', @{ $_->{bytes} }) } @$hc],
                  [@bytes[0 .. $kept - 1]],
                  "chat stop \"$stop\": the entries of the $kept tokens "
                  . 'that start in the text');

        my (undef, $hev, $hdone) = stream('/v1/chat/completions', { %chat,
                                          stream => $t });
        my @got;
        for my $e (@$hev) {
            my $ch = $e->{choices}[0] or next;
            my $hl = $ch->{logprobs} or next;
            push @got, @{ $hl->{content} };
        }
        ok($hdone, "chat stop \"$stop\" streamed: [DONE]");
        is_deeply([map { pack('C*', @{ $_->{bytes} }) } @got],
                  [@bytes[0 .. $kept - 1]],
                  "chat stop \"$stop\" streamed: those $kept entries");
        is_deeply(\@got, $hc, "chat stop \"$stop\" streamed: as the "
                  . 'plain answer\'s');
    }

    # a token of 39 bytes (spaces: Qwen has them up to 128) before a
    # split character; the backend once held every token's bytes in 16
    my $long = "Hello" . (' ' x 40) . "world, internationalization "
               . "\x{1f999}.";
    my $ldir = File::Temp::tempdir(CLEANUP => 1);
    system($py, 'scripts/make-scripted-model', '--tokenizer',
           ($ENV{NGX_GPU_SHARED} // '../shared') . '/models/qwen3-tokenizer',
           '--out', $ldir, '--text', Encode::encode_utf8($long)) == 0
        or die "make-scripted-model failed\n";
    start_backend(name => 'c', model => $ldir, args => ['--device', 'cpu']);
    $port = start_gpu_nginx(name => 'c');
    my @lb = $token_bytes->();
    ok((grep { length > 16 } @lb), 'a token of more than 16 bytes');
    my ($lst, $lr) = post('/v1/completions', { prompt => 'hi',
                          max_tokens => 40, logprobs => 0 });
    is($lst, 200, 'long token: 200');
    is($lr->{choices}[0]{text}, $long, 'long token: the text');
    is_deeply($lr->{choices}[0]{logprobs}{text_offset}, [$offsets->(@lb)],
              'long token: the offsets');
    my (undef, $lev, $ldone) = stream('/v1/completions', { prompt => 'hi',
                                      max_tokens => 40, stream => $t });
    ok($ldone && join('', map { $_->{choices}[0]{text} } @$lev) eq $long,
       'long token streamed: the text');
}

# (the 400s are data blocks in t/255-sampling-errors.t)


done_testing();

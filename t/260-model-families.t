# The model families served end to end: each Qwen2, GLM, GLM-4 and
# Llama-3-RoPE fixture of t/fixtures/hf-logits (tiny random weights,
# scripts/make-logit-refs) served through nginx + the module + gpu_backend
# (CPU engine) must compute what Hugging Face transformers computes:
#
#   - /v1/completions with each reference prompt as token ids (1 to 1064
#     tokens, sent at once so prefill chunks share steps), max_tokens 1,
#     greedy, logprobs 5: the top logprobs are log_softmax of HF's float64
#     logits at the last prompt position (within 1e-4) and the chosen
#     token is HF's argmax;
#   - the same streamed: the same token and logprobs;
#   - decoding: each step of a 4-token answer (after 9 and 1000 prompt
#     tokens) has the logprobs of a fresh prefill of the prompt plus the
#     tokens before it;
#   - /v1/chat/completions with the family's template picked from the
#     model's tokenizer_config.json (Qwen2 -> chatml, GLM / GLM-4 -> glm4,
#     Llama-3 -> llama3): usage.prompt_tokens and the answer's logprobs
#     are those of completions on the ids that HF's apply_chat_template +
#     tokenizers give (scripts/chat-oracle; skipped visibly without
#     build/venv's jinja2 and tokenizers), streamed and not.
#
# The model directories (the fixture's weights and a tokenizer that fills
# its vocabulary, t/lib/NgxGpuFamily.pm) are made under /tmp at start.
use lib 't/lib';
use strict;
use warnings;
use Test::More;
use File::Path qw(make_path remove_tree);
use JSON::PP;
use POSIX ();
use NgxGpuTest;
use NgxGpuFamily;

my $TOL = 1e-4;
my $fx = $ENV{NGX_GPU_FIXTURES} // 't/fixtures/hf-logits';
my @names = grep { family_of($_) }
            map { m{([^/]+)$} } sort glob "$fx/*";
plan skip_all => "no Qwen2 / GLM / Llama-3 fixtures in $fx" unless @names;

my $py = 'build/venv/bin/python';
my $oracle = -x $py
    && system("$py -c 'import tokenizers, jinja2' 2>/dev/null") == 0;
diag('build/venv lacks tokenizers or jinja2: chat prompts are not '
     . 'checked against HF (scripts/install-deps --test)') unless $oracle;

my $tmp = "/tmp/ngx-gpu-families-$$";
my $owner = $$;
END { remove_tree($tmp) if $$ == $owner && -d $tmp }

my (%m, %sock);
for my $i (0 .. $#names) {
    my $n = $names[$i];
    $m{$n} = family_model("$fx/$n", "$tmp/$n");
    $m{$n}{refs} = read_refs("$fx/$n/refs.bin");
    # a small batch budget: the 1000-token prompt is prefilled in chunks,
    # beside the others, through the paged KV cache
    $sock{$n} = start_backend(name => "f$i", model => $m{$n}{dir},
        args => ['--device', 'cpu', '--kv-cache-mb', '16',
                 '--max-batch-tokens', '96']);
}
my $port = start_nginx(%sock);
my $json = JSON::PP->new->utf8->canonical;

sub post {
    my ($n, $path, $req) = @_;
    my ($st, undef, $body) = http_request('POST', "/$n$path",
                                          $json->encode($req), port => $port);
    return ($st, scalar eval { $json->decode($body) }, $body);
}

# several requests at once; returns [status, decoded body] each
sub post_all {
    my ($n, $path, @reqs) = @_;
    my @kids;
    for my $r (@reqs) {
        pipe(my $rd, my $wr) or die "pipe: $!";
        my $pid = fork() // die "fork: $!";
        if ($pid == 0) {
            close $rd;
            my ($st, undef, $b) = http_request('POST', "/$n$path",
                $json->encode($r), port => $port);
            print $wr "$st\n$b";
            close $wr;
            POSIX::_exit(0);
        }
        close $wr;
        push @kids, [$pid, $rd];
    }
    my @res;
    for my $k (@kids) {
        my $fh = $k->[1];
        my $out = do { local $/; <$fh> } // '';
        waitpid($k->[0], 0);
        my ($st, $b) = split /\n/, $out, 2;
        push @res, [$st, scalar eval { $json->decode($b // '') }];
    }
    return @res;
}

# the decoded events of a stream, and whether it ended with [DONE]
sub stream {
    my ($n, $path, $req) = @_;
    my ($st, undef, $body) = http_request('POST', "/$n$path",
        $json->encode({ %$req, stream => JSON::PP::true }), port => $port);
    my @ev;
    for my $e (split /\n\n/, $body) {
        next unless $e =~ s/^data: //;
        push @ev, $json->decode($e) unless $e eq '[DONE]';
    }
    return ($st, \@ev, $body =~ /data: \[DONE\]\n\n\z/);
}

# a completions logprobs entry (step k) as { id => logprob }; undef if a
# token text is not one of the model's
sub top_ids {
    my ($mm, $lp, $k) = @_;
    my %top;
    for my $t (keys %{ $lp->{top_logprobs}[$k] }) {
        my $id = $mm->{id}{$t};
        return undef unless defined $id;
        $top{$id} = $lp->{top_logprobs}[$k]{$t};
    }
    return \%top;
}

# compare a served step with HF's logits row: "" if it agrees, "eos" if a
# greedy answer ended at once at EOS, HF's argmax (no token, no logprobs:
# then ask again with sampling), else why not.  $sampled: the token was
# drawn, not HF's argmax, and may be a sixth alternative.
sub against_hf {
    my ($mm, $r, $row, $sampled) = @_;
    return "status $r->[0]" unless $r->[0] == 200 && $r->[1];
    my $c = $r->[1]{choices}[0];
    my $lp = $c->{logprobs};
    my $hf = log_softmax($row);
    my @order = sort { $hf->[$b] <=> $hf->[$a] } 0 .. $#$hf;
    if (!@{ $lp->{tokens} // [] }) {
        return "no token, finish_reason $c->{finish_reason}"
            if $sampled || $c->{finish_reason} ne 'stop';
        return "ended at once, but HF's argmax is $order[0], not EOS"
            if $hf->[$mm->{eos}] < $hf->[$order[0]] - $TOL;
        return 'eos';
    }
    my $top = top_ids($mm, $lp, 0) // return 'a token text that is no '
        . 'token: ' . join(',', keys %{ $lp->{top_logprobs}[0] });
    my $chosen = $mm->{id}{ $lp->{tokens}[0] } // -1;
    # a special token (the chat tokens) adds nothing to the text
    my $want = $chosen < $mm->{n_special} ? '' : $mm->{text}[$chosen] // '';
    return "text \"$c->{text}\" for token $chosen" if $c->{text} ne $want;
    # HF's argmax (a tie within the tolerance may go either way)
    return "chose $chosen ($hf->[$chosen]), HF's argmax is $order[0] "
        . "($hf->[$order[0]])" if $chosen < 0
        || (!$sampled && $hf->[$chosen] < $hf->[$order[0]] - $TOL);
    return "token_logprob $lp->{token_logprobs}[0], HF $hf->[$chosen]"
        if abs($lp->{token_logprobs}[0] - $hf->[$chosen]) > $TOL;
    my $extra = $sampled && $hf->[$chosen] < $hf->[$order[4]] - $TOL ? 1 : 0;
    return scalar(keys %$top) . " alternatives" if keys %$top != 5 + $extra;
    for my $id (sort { $a <=> $b } keys %$top) {
        my $err = abs($top->{$id} - $hf->[$id]);
        $mm->{worst} = $err if $err > ($mm->{worst} // 0);
        return "token $id: logprob $top->{$id}, HF $hf->[$id]"
            if abs($top->{$id} - $hf->[$id]) > $TOL;
        return "token $id ($hf->[$id]) is not among HF's top 5"
            if $hf->[$id] < $hf->[$order[4]] - $TOL
               && !($extra && $id == $chosen);
    }
    return '';
}

# a served step against HF; where greedy ends at once at EOS, the step
# drawn with a seed instead (logprobs are the model's, before the
# temperature).  Returns why not ("" if it agrees) and [request, result].
sub check_hf {
    my ($n, $req, $res, $row) = @_;
    my $why = against_hf($m{$n}, $res, $row);
    for my $seed (1 .. 20) {
        last if $why ne 'eos';
        $req = { %$req, temperature => 1, seed => $seed };
        $res = [post($n, '/v1/completions', $req)];
        my $c = $res->[1] && $res->[1]{choices}[0];
        $why = $c && $c->{finish_reason} eq 'stop' && !$c->{text}
               ? 'eos' : against_hf($m{$n}, $res, $row, 1);
    }
    return ($why, [$req, $res]);
}

# as asked, or else drawn with seeds, until the answer has at least $min
# tokens
sub answer {
    my ($n, $path, $req, $min) = @_;
    my @r;
    for my $seed (0 .. 20) {
        my %q = (%$req, $seed ? (temperature => 1, seed => $seed) : ());
        @r = (post($n, $path, \%q), \%q);
        return @r if $r[1] && $r[1]{usage}{completion_tokens} >= $min;
    }
    return @r;
}

for my $n (@names) {
    my $mm = $m{$n};
    my $refs = $mm->{refs};
    my @seqs = @{ $refs->{seqs} };
    my %base = (model => $n, max_tokens => 1, temperature => 0,
                logprobs => 5);

    # every reference prompt, and the longest with its 64 given tokens:
    # row 0 of each, the last row of the longest
    my @cases = map { [$_->{n_prompt}, $_, 0] } @seqs;
    push @cases, [$seqs[-1]{n_prompt} + $refs->{n_decode}, $seqs[-1],
                  $refs->{n_decode}];
    my @reqs = map {
        { %base, prompt => [@{ $_->[1]{tokens} }[0 .. $_->[0] - 1]] }
    } @cases;
    my @res = post_all($n, '/v1/completions', @reqs);
    my @used;
    for my $k (0 .. $#cases) {
        my ($len, $s, $row) = @{ $cases[$k] };
        my ($why, $u) = check_hf($n, $reqs[$k], $res[$k], $s->{rows}[$row]);
        push @used, $u;
        is($why, '', "$n: $len-token prompt: logprobs and token are HF's");
        is($res[$k][1] && $res[$k][1]{usage}{prompt_tokens}, $len,
           "$n: $len-token prompt: usage.prompt_tokens");
    }

    diag(sprintf "%s: served logprobs within %.1e of HF's%s", $n,
                 $mm->{worst} // -1, (grep { $_->[0]{seed} } @used)
                 ? ' (' . scalar(grep { $_->[0]{seed} } @used)
                   . ' drawn: greedy ends at EOS)' : '');

    # streamed: the answer of the 9-token prompt, the same logprobs
    my ($sreq, $sres) = @{ $used[1] };
    my ($st, $ev, $done) = stream($n, '/v1/completions', $sreq);
    my @lp = map { $_->{choices}[0]{logprobs} // () } @$ev;
    ok($st == 200 && $done, "$n: streamed, [DONE]");
    is_deeply(\@lp, [$sres->[1]{choices}[0]{logprobs}],
              "$n: streamed: the logprobs of the plain answer");

    # decoding, after a short and a long prompt: each step has the
    # logprobs of a fresh prefill of everything before it
    for my $sq (@seqs[1, 3]) {
        my @p = @{ $sq->{tokens} }[0 .. $sq->{n_prompt} - 1];
        # (drawn: greedy answers of random weights tend to repeat a token)
        my ($dst, $d) = answer($n, '/v1/completions', { %base,
            prompt => \@p, max_tokens => 4, temperature => 1,
            seed => 100 }, 4);
        my $dlp = $d && $d->{choices}[0]{logprobs};
        my @gen = map { $mm->{id}{$_} } @{ $dlp->{tokens} // [] };
        ok($dst == 200 && @gen == 4 && !grep(!defined, @gen),
           "$n: @{[ scalar @p ]}-token prompt: an answer of 4 tokens: "
           . $json->encode($dlp->{tokens}));
        my @fresh = post_all($n, '/v1/completions', map {
            { %base, prompt => [@p, @gen[0 .. $_ - 1]] }
        } 1 .. $#gen);
        my $bad = '';
        for my $k (1 .. $#gen) {
            my $a = top_ids($mm, $dlp, $k);
            my $f = $fresh[$k - 1][1];
            my $b = $f && @{ $f->{choices}[0]{logprobs}{tokens} }
                    && top_ids($mm, $f->{choices}[0]{logprobs}, 0);
            # a drawn token outside the top 5 is a sixth alternative
            delete $a->{ $gen[$k] } if $a && $b && keys %$a == 6;
            if (!$a || !$b
                || join(',', sort keys %$a) ne join(',', sort keys %$b)
                || grep { abs($a->{$_} - $b->{$_}) > $TOL } keys %$a)
            {
                $bad ||= "step $k: " . $json->encode([$a, $b]);
            }
        }
        is($bad, '', "$n: @{[ scalar @p ]}-token prompt: decode steps "
           . "agree with prefill");
    }

    # chat, with the template from tokenizer_config.json
    my ($fi) = grep { $names[$_] eq $n } 0 .. $#names;
    like(backend_log("f$fi"), qr/chat template: \Q$mm->{template}\E\n/,
         "$n: chat template $mm->{template} picked from tokenizer_config");
    my $msgs = [{ role => 'system', content => 'Be brief.' },
                { role => 'user', content => 'Say hi, then count: 1 2 3.' },
                { role => 'assistant', content => 'hi 1 2 3' },
                { role => 'user', content => "Again\n  in words?" }];
    my ($cst, $c, undef, $creq) = answer($n, '/v1/chat/completions', {
        model => $n, messages => $msgs, max_tokens => 4, temperature => 0,
        logprobs => JSON::PP::true, top_logprobs => 5 }, 1);
    is($cst, 200, "$n: chat answered");
    my $entries = $c && $c->{choices}[0]{logprobs}{content} || [];
    ok(@$entries && @$entries == $c->{usage}{completion_tokens},
       "$n: chat: a logprobs entry per token");
    my ($sst, $sev, $sdone) = stream($n, '/v1/chat/completions', $creq);
    my $text = join '', map { $_->{choices}[0]{delta}{content} // '' }
                        @$sev;
    ok($sst == 200 && $sdone && $text eq ($c && $c->{choices}[0]{message}
       {content} // ''), "$n: chat streamed: the same text");
    SKIP: {
        skip 'no HF chat oracle (build/venv: tokenizers, jinja2)', 2
            unless $oracle;
        open(my $fh, '-|', $py, 'scripts/chat-oracle', $mm->{dir},
             $json->encode($msgs)) or die "chat-oracle: $!";
        my $hf = $json->decode(do { local $/; <$fh> });
        close $fh;
        is($c && $c->{usage}{prompt_tokens}, scalar @{ $hf->{ids} },
           "$n: chat: prompt_tokens as HF renders and tokenizes it");
        # the same ids through completions (same sampling): the same
        # tokens and logprobs (chat may stop earlier, at end of turn)
        my (undef, $r) = post($n, '/v1/completions', { %base,
            (map { $_ => $creq->{$_} } grep { exists $creq->{$_} }
             qw(temperature seed max_tokens)), prompt => $hf->{ids} });
        my $rl = $r && $r->{choices}[0]{logprobs};
        my $why = '';
        for my $k (0 .. $#$entries) {
            my $e = $entries->[$k];
            my %alt = map { $_->{token} => $_->{logprob} }
                      @{ $e->{top_logprobs} };
            my $want = $rl && $rl->{top_logprobs}[$k] || {};
            if ($e->{token} ne ($rl->{tokens}[$k] // '')
                || join(',', sort keys %alt) ne join(',', sort keys %$want)
                || grep { abs($alt{$_} - $want->{$_}) > 1e-6 } keys %alt)
            {
                $why ||= "token $k: " . $json->encode([$e, $want]);
            }
        }
        is($why, '', "$n: chat answer = completions on HF's rendered ids");
    }
}

done_testing();

#!/usr/bin/env bash
# Integration: bad input gets one clear error (or warning) line naming the file or flag, a
# non-zero exit where it is an error, and never a partial output file.
set -u
DATA=$NETLM_DATA_DIR
T=$(mktemp -d)
trap 'chmod -R u+rwx "$T"; rm -rf "$T"' EXIT
pass=0 fail=0

# expect NAME EXIT_CODE PATTERN CMD...: exit code must match (nonzero = "any non-zero"), stderr
# must be exactly one line matching PATTERN, and nothing may be left in $T/out*.
expect() {
  local name=$1 want=$2 pattern=$3
  shift 3
  "$@" >"$T/stdout" 2>"$T/stderr"
  local rc=$?
  local lines
  lines=$(grep -c '' "$T/stderr")
  local ok=1
  if [ "$want" = nonzero ]; then [ "$rc" -ne 0 ] || ok=0; else [ "$rc" -eq "$want" ] || ok=0; fi
  [ "$lines" -eq 1 ] || ok=0
  grep -Eq -- "$pattern" "$T/stderr" || ok=0
  if ls "$T"/out* >/dev/null 2>&1; then ok=0; echo "  left output: $(ls "$T"/out*)"; fi
  if [ $ok -eq 1 ]; then
    pass=$((pass + 1)); echo "ok   $name: $(cat "$T/stderr")"
  else
    fail=$((fail + 1)); echo "FAIL $name: exit $rc (want $want), $lines stderr line(s):"; sed 's/^/    /' "$T/stderr"
  fi
  rm -rf "$T"/out*
}

good=$DATA/pcaps/tcpdump-ssh.pcap
: > "$T/empty.pcap"
head -c 3000 "$good" > "$T/truncated.pcap"
echo "this is not a capture" > "$T/text.pcap"
# a valid header followed by a record claiming a 2 GB frame
{ head -c 24 "$good"; printf '\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\x7f\xff\xff\xff\x7f'; head -c 200 /dev/urandom; } > "$T/corrupt.pcap"
mkdir -p "$T/locked" && chmod 000 "$T/locked"

expect "unknown flag" 2 "unknown option '--frobnicate'" "$NETLM" sessions --frobnicate "$good"
expect "unknown command" 2 "unknown command 'sesions'" "$NETLM" sesions "$good"
expect "bad flag value" 2 "--workers: expected an integer" "$NETLM" sessions --workers zero "$good"
expect "bad choice" 2 "--port-reuse: expected one of split, merge" "$NETLM" sessions --port-reuse maybe "$good"
expect "missing file" 1 "nope.pcap" "$NETLM" sessions "$T/nope.pcap"
expect "empty file" 1 "empty.pcap" "$NETLM" sessions -o "$T/out.tsv" "$T/empty.pcap"
expect "not a capture" 1 "text.pcap.*not a pcap" "$NETLM" sessions -o "$T/out.tsv" "$T/text.pcap"
# a truncated or corrupted capture: the readable frames are used, with one warning naming the file
expect "truncated capture (warning)" 0 "warning: .*truncated.pcap" "$NETLM" sessions --quiet -o "$T/keep.tsv" "$T/truncated.pcap"
[ -s "$T/keep.tsv" ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL truncated capture gave no sessions"; }
expect "corrupted capture (warning)" 0 "warning: .*corrupt.pcap" "$NETLM" sessions --quiet "$T/corrupt.pcap"
if [ "$(id -u)" -ne 0 ]; then
  expect "unreadable folder" 1 "locked" "$NETLM" sessions "$T/locked"
fi
expect "corpus: not a capture" 1 "text.pcap" "$NETLM" corpus --quiet --pcap_path "$T/text.pcap" -o "$T/out.txt"
expect "corpus: bad header mode" 2 "--header-mode" "$NETLM" corpus --header-mode everything --pcap_path "$good" -o "$T/out.txt"

# dataset: class folders
mkdir -p "$T/classes/a" "$T/classes/b"
cp "$good" "$T/classes/a/"
expect "dataset: class folder without captures" 1 "classes/b: class folder has no capture files" \
  "$NETLM" dataset understanding --quiet --pcap_path "$T/classes" --dataset_dir "$T/out"
cp "$DATA/pcaps/tcpdump-802.1ad_QinQ.pcap" "$T/classes/b/"
expect "dataset: class folder without sessions" 1 "classes/b: no sessions" \
  "$NETLM" dataset understanding --quiet --pcap_path "$T/classes" --dataset_dir "$T/out"
cp "$DATA/pcaps/tcpdump-dns_tcp.pcap" "$T/classes/b/"
expect "dataset: class_num too small" 1 "--class_num 1 is smaller than the 2 class folders" \
  "$NETLM" dataset understanding --quiet --pcap_path "$T/classes" --dataset_dir "$T/out" --class_num 1
expect "dataset: no task" 2 "understanding' or 'generation'" \
  "$NETLM" dataset --pcap_path "$T/classes" --dataset_dir "$T/out"
expect "dataset: missing root" 1 "nowhere" \
  "$NETLM" dataset understanding --pcap_path "$T/nowhere" --dataset_dir "$T/out"
expect "dataset: unknown field" 2 "--fields: unknown or repeated field 'colour'" \
  "$NETLM" dataset generation --pcap_path "$T/classes" --dataset_dir "$T/out" --fields ip_len,colour

# preprocess
printf 'label\ttext_a\n' > "$T/empty.tsv"
expect "preprocess: no documents" 1 "empty.tsv: no documents" \
  "$NETLM" preprocess --quiet --corpus_path "$T/empty.tsv" --dataset_path "$T/out.bin"
expect "preprocess: binary input" 1 "NUL byte" \
  "$NETLM" preprocess --quiet --corpus_path "$good" --dataset_path "$T/out.bin"
printf 'no specials here\n' > "$T/vocab.txt"
expect "preprocess: vocab without specials" 1 "vocab.txt" \
  "$NETLM" preprocess --quiet --corpus_path "$T/empty.tsv" --vocab_path "$T/vocab.txt" --dataset_path "$T/out.bin"
expect "preprocess: missing input" 1 "absent.txt" \
  "$NETLM" preprocess --quiet --corpus_path "$T/absent.txt" --dataset_path "$T/out.bin"

# a model given as a file (the seed's pretrained_model.bin) instead of a model directory
printf 'PK' > "$T/pretrained_model.bin"
expect "classify: a PyTorch file as the model" nonzero "pretrained_model.bin: a file, not a model directory" \
  "$NETLM" classify --model "$T/pretrained_model.bin" --test_path "$T/empty.tsv"

# --help: every command (and both finetune tasks) prints its usage once, exit 0
for c in $("$NETLM" --help | awk '/^commands:/ {on = 1; next} on && !NF {exit} on {print $1}') \
         "finetune understanding" "finetune generation"; do
  first=$($NETLM $c --help 2>&1 | head -1)
  if $NETLM $c --help >/dev/null 2>&1 && [ "${first#"usage: netlm $c "}" != "$first" ] &&
     [ "$(grep -o netlm <<<"$first" | wc -l)" -eq 1 ]; then
    pass=$((pass + 1)); echo "ok   $c --help: $first"
  else
    fail=$((fail + 1)); echo "FAIL $c --help: '$first'"
  fi
done

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

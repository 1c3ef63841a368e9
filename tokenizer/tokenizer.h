/* tokenizer.h — packets and sessions to tokens: vocabularies, header modes, hex tokens, sequences,
 * token shards, and the seed-compatible corpus and dataset builders.
 *
 * A token is two bytes written as four lowercase hex digits. The built-in vocabulary has 65,541
 * ids ([PAD] [SEP] [CLS] [UNK] [MASK], then 0000..ffff as 5 + value); a UER/WordPiece vocab file
 * is turned once into a table of the id sequence of every two-byte value, so tokenizing is a
 * lookup either way. Header fields are found from the decoder's offsets, never a fixed count. */
#ifndef NETLM_TOKENIZER_H
#define NETLM_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capture/capture.h"
#include "flowtable/flowtable.h"

/* ---- vocabulary ---- */

enum { TOK_PAD = 0, TOK_SEP = 1, TOK_CLS = 2, TOK_UNK = 3, TOK_MASK = 4 }; /* both vocab kinds */
#define TOK_BUILTIN_VOCAB_SIZE 65541u
#define TOK_MAX_PIECES 4 /* most ids one 4-hex token can become under WordPiece */

struct tok_vocab;
struct tok_vocab *tok_vocab_builtin(void);
/* UER vocab file: one token per line, id = 0-based line number, first whitespace-separated field
 * of each line; the five special tokens must be present. NULL + one-line message on error.
 * Read as UER reads it: UTF-8 (invalid UTF-8 or a NUL byte is an error), \n, \r\n or a lone \r
 * ends a line, an empty or blank line still takes its id (its token matches nothing), and a
 * token that appears twice maps to its last line (UER's dict keeps the last assignment). */
struct tok_vocab *tok_vocab_load(const char *path, char *err, size_t errlen);
/* The same from bytes in memory; name is used in messages. */
struct tok_vocab *tok_vocab_load_buffer(const char *name, const void *data, size_t size,
                                        char *err, size_t errlen);
void tok_vocab_free(struct tok_vocab *v);
uint32_t tok_vocab_size(const struct tok_vocab *v);
bool tok_vocab_is_builtin(const struct tok_vocab *v);
/* A 64-bit digest of the token list (FNV-1a over the tokens in id order), never 0: two
 * vocabularies that map every id to the same token have the same digest, a file that lists
 * the built-in tokens the built-in's. The seed's encryptd_vocab.txt has the built-in's size but
 * other ids, which the sizes alone cannot tell. */
uint64_t tok_vocab_digest(const struct tok_vocab *v);
/* The token text of an id ("[CLS]", "0a1b", "##f", ...); NULL when out of range. */
const char *tok_vocab_token(const struct tok_vocab *v, uint32_t id);
/* Generated ids as the seed's target text ("0000 003c"): tokens joined by single spaces up to
 * the first [SEP] (left out), "[UNK]" for an id outside the vocabulary, whole tokens only while
 * they fit in cap (NUL included). Returns the text's length. */
size_t tok_ids_text(const struct tok_vocab *v, const uint32_t *ids, uint32_t n, char *out, size_t cap);
/* The ids of the 4-hex token for value (1 id with the built-in vocab; WordPiece pieces, or
 * [UNK], with a file vocab). Returns the count, ≤ TOK_MAX_PIECES. */
int tok_vocab_value_ids(const struct tok_vocab *v, uint16_t value, uint32_t ids[TOK_MAX_PIECES]);
/* Any whitespace-free word (a TSV token): the five specials by exact name, otherwise UER's
 * BertTokenizer: control characters dropped, A-Z lower-cased, each ASCII punctuation character
 * split off as a word of its own, then greedy longest-match WordPiece on each part (##
 * continuation; [UNK] when no decomposition, or > 200 chars). Returns the count written
 * (≤ max, the first max ids); *needed (may be NULL) gets the full count. */
size_t tok_vocab_word_ids(const struct tok_vocab *v, const char *word, size_t len, uint32_t *ids,
                          size_t max, size_t *needed);

/* ---- header modes ---- */

enum tok_header_mode {
    TOK_HDR_NONE = 0, /* bytes as captured */
    TOK_HDR_SEED,     /* NetGPT bug-compatible: source MAC, IPv4 addresses, TCP ports zeroed */
    TOK_HDR_FULL,     /* both MACs, IPv4/IPv6 addresses, TCP and UDP ports zeroed (default) */
    TOK_HDR_STRICT,   /* full + IP ID, TTL/hop limit, IP/L4 checksums, TCP timestamp option */
    TOK_HDR_STRIP,    /* L2–L4 headers dropped: the L4 payload only */
};
/* "none", "seed", "full", "strict", "strip"; parse returns false for anything else. */
const char *tok_header_mode_name(enum tok_header_mode mode);
bool tok_header_mode_parse(const char *name, enum tok_header_mode *out);

/* Copies the first min(len, cap) bytes of a frame into out with the mode applied and returns
 * the resulting length (strip: the L4 payload only, up to the IP length, so without Ethernet
 * padding; empty without a payload). Nothing at or past len is read or written; a field that
 * lies partly past len has its bytes before len zeroed. */
size_t tok_apply_header_mode(enum tok_header_mode mode, const uint8_t *frame, size_t len,
                             const struct cap_layers *layers, uint8_t *out, size_t cap);

/* ---- hex tokens ---- */

/* Two-byte token values: stride 2 gives b0b1 b2b3 ... (an odd last byte is dropped), stride 1
 * gives b0b1 b1b2 ... (overlapping). At most max_tokens. Returns the count. */
size_t tok_hex_values(const uint8_t *bytes, size_t len, int stride, size_t max_tokens,
                      uint16_t *out);
/* Four lowercase hex digits and a NUL. */
void tok_format_value(uint16_t value, char out[5]);

/* ---- sequences ---- */

struct tok_settings {
    enum tok_header_mode header_mode;
    int stride;                 /* 1 or 2 */
    uint32_t tokens_per_packet; /* cap per packet (64 = 128 bytes at stride 2) */
    uint32_t packets;           /* packets of a session used (32) */
    uint32_t seq_length;        /* ids per sequence, [CLS] and [SEP] included (128) */
    bool sep_between_packets;   /* [SEP] after each packet but the last */
};
void tok_settings_defaults(struct tok_settings *s); /* full, stride 2, 64, 32, 128, false */

/* The session as the seed's TSV text: space-separated 4-hex tokens (and "[SEP]" between
 * packets when asked), no [CLS]/[SEP] around it, no trailing space. Returns the length written
 * (NUL-terminated, truncated to cap - 1); *needed gets the full length. */
size_t tok_session_text(const struct tok_settings *s, const struct ft_session *session, char *out,
                        size_t cap, size_t *needed);
/* One packet alone, as the text of a packet-level sample. */
size_t tok_packet_text(const struct tok_settings *s, const struct ft_stored_packet *pkt, char *out,
                       size_t cap, size_t *needed);
/* Text (as above, or a TSV's text_a column) to model input: [CLS] + ids + [SEP], truncated (the
 * [SEP] is lost when truncated, as the seed does) and right-padded with [PAD] to seq_length.
 * Returns the number of real (non-pad) ids. */
uint32_t tok_text_ids(const struct tok_vocab *v, const char *text, size_t len, uint32_t seq_length,
                      uint32_t *ids);
/* The same ids straight from a session, without the text in between (the sensor's path).
 * Equal to tok_text_ids(tok_session_text(...)) by construction and by test. */
uint32_t tok_session_ids(const struct tok_vocab *v, const struct tok_settings *s,
                         const struct ft_session *session, uint32_t *ids);

/* ---- seed pretraining corpus ---- */

/* The seed's corpus document for one packet: the bytes after the port fields (real offsets),
 * split in two halves (first = (n + n % 4) / 2 bytes), each as overlapping tokens, ≤ 256 each.
 * Returns false (nothing to write) when fewer than 5 bytes remain or the packet has no ports
 * (TCP, UDP, UDP-Lite, SCTP, DCCP). With use_mode the frame is masked by mode first and
 * tokenized whole instead (strip: the payload), ports or not. *n1 and *n2 get the token count
 * of each half (half1/half2 hold TOK_CORPUS_MAX_HALF values). */
bool tok_corpus_halves(const uint8_t *frame, size_t len, const struct cap_layers *layers,
                       bool use_mode, enum tok_header_mode mode, uint16_t *half1, size_t *n1,
                       uint16_t *half2, size_t *n2);
#define TOK_CORPUS_MAX_HALF 256

/* ---- generation fields ---- */

enum tok_field {
    TOK_FIELD_IP_LENGTH = 0, /* IPv4 total length (the seed's task) / IPv6 payload length */
    TOK_FIELD_SRC_PORT,
    TOK_FIELD_DST_PORT,
    TOK_FIELD_TTL,           /* IPv4 TTL / IPv6 hop limit */
    TOK_FIELD_TCP_WINDOW,
    TOK_FIELD_COUNT
};
const char *tok_field_name(enum tok_field f); /* "ip_len", "src_port", "dst_port", "ttl", "tcp_window" */
bool tok_field_parse(const char *name, enum tok_field *out);
/* Reads the field from the frame bytes and zeroes it there. Returns false when the packet does
 * not have the field (or it lies past len); the seed's target is then 0. */
bool tok_field_take(enum tok_field f, uint8_t *frame, size_t len, const struct cap_layers *layers,
                    uint32_t *value);
/* The seed's target text for a value: four bytes big-endian as two tokens, 60 → "0000 003c". */
void tok_field_target_text(uint32_t value, char out[10]);
/* The inverse, for generated text: the value of tokens of four lowercase hex digits each, one
 * space between them, 16 digits at most ("0000 003c" → 60); false for anything else. */
bool tok_field_target_value(const char *text, uint64_t *value);

/* ---- token shards ---- */

/* Little-endian file: a 64-byte header then uint32 ids. */
#define TOK_SHARD_MAGIC "NETLMTOK"
#define TOK_SHARD_VERSION 1u
struct tok_shard_header {
    char magic[8];
    uint32_t version;
    uint32_t header_size; /* 64 */
    uint64_t n_tokens;
    uint64_t n_documents;
    uint32_t vocab_size;
    uint32_t seq_length;
    uint64_t vocab_digest; /* tok_vocab_digest of the vocabulary written with; 0: not recorded */
    uint8_t reserved[16];
};

struct tok_shard_writer;
/* Writes to "<path>.tmp.<pid>"; commit renames it to path, abort removes it. */
struct tok_shard_writer *tok_shard_create(const char *path, uint32_t vocab_size, uint32_t seq_length,
                                          char *err, size_t errlen);
/* One document ([CLS] ... [SEP] as given). */
int tok_shard_append(struct tok_shard_writer *w, const uint32_t *ids, size_t n);
/* Both free the writer. Commit fails (and removes the temporary file) if an append failed
 * (a write error, or an id ≥ vocab_size) and reports that failure. */
int tok_shard_commit(struct tok_shard_writer *w, char *err, size_t errlen);
void tok_shard_abort(struct tok_shard_writer *w);
/* Records the vocabulary's tok_vocab_digest in the header (before commit), so that a trainer
 * given another vocabulary of the same size can tell. */
void tok_shard_set_vocab_digest(struct tok_shard_writer *w, uint64_t digest);
/* "<path>.tmp.<pid>", for a caller that removes it when a signal ends the run. */
const char *tok_shard_temp_path(const struct tok_shard_writer *w);

struct tok_shard {
    struct tok_shard_header header;
    const uint32_t *ids; /* memory-mapped */
    void *map;
    size_t map_len;
};
/* Checks magic, version, header size and that the file is exactly 64 + 4 × n_tokens bytes;
 * the ids themselves are not read (see tok_shard_check_ids). */
int tok_shard_open(const char *path, struct tok_shard *out, char *err, size_t errlen);
/* Reads every id once: -1 and a message if one is ≥ vocab_size. */
int tok_shard_check_ids(const struct tok_shard *s, char *err, size_t errlen);
void tok_shard_close(struct tok_shard *s);

#endif

/* fuzz_pcapng.c — libFuzzer target for netlm's pcapng reader (capture/pcapng.c), which reads
 * untrusted files. The input is the file; it is read in bursts whose sizes come from its last
 * byte, so that the reader's second buffer and its holds are reached, and with a capture filter
 * when that byte says so. Besides crashes and out-of-bounds reads, it traps when a frame lies
 * outside what was read, the reading does not end, or an error has no message.
 *
 * Built by CMake with CC=clang -DNETLM_FUZZ=ON; or by hand:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *       tests/fuzz/fuzz_pcapng.c capture/pcapng.c -lpcap -o fuzz_pcapng && ./fuzz_pcapng corpus/
 * (the shared pcapng files make a good corpus). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "capture/pcapng.h"

#define CHECK(c)                                                                                  \
    do {                                                                                          \
        if (!(c))                                                                                 \
            __builtin_trap();                                                                     \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    const uint8_t knobs = data[size - 1];
    const int burst = 1 + (knobs & 0x3f);
    int fd = memfd_create("fuzz_pcapng", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (write(fd, data + 4, size - 4) != (ssize_t)(size - 4) || lseek(fd, 0, SEEK_SET) != 0) {
        close(fd);
        return 0;
    }
    bool damaged;
    char err[512];
    /* the first 4 bytes go in as the caller's look at the magic, whatever they are */
    struct cap_pcapng *r = cap_pcapng_open(fd, data, 4, &damaged, err, sizeof err);
    if (!r) {
        CHECK(err[0] != '\0');
        close(fd);
        return 0;
    }
    if (knobs & 0x40) {
        uint16_t linktype;
        char why[512];
        (void)cap_pcapng_set_filter(r, knobs & 0x80 ? "tcp or udp port 53" : "ether[0] & 1 = 0", &linktype, why,
                                    sizeof why);
    }
    uint64_t frames = 0;
    for (int rounds = 0;; rounds++) {
        CHECK(rounds <= (int)size + 2); /* every call takes a block or ends */
        struct cap_pcapng_frame f;
        int rc = CAP_PCAPNG_FRAME;
        for (int n = 0; n < burst && rc == CAP_PCAPNG_FRAME; n++) {
            rc = cap_pcapng_next(r, n == 0, &f);
            if (rc == CAP_PCAPNG_FRAME) {
                CHECK(f.caplen <= size);
                if (f.caplen) { /* read every byte, so that ASan sees one out of bounds */
                    volatile uint8_t sum = 0;
                    for (uint32_t i = 0; i < f.caplen; i++)
                        sum ^= f.data[i];
                    (void)sum;
                }
                frames++;
            }
        }
        if (rc == CAP_PCAPNG_END || rc == CAP_PCAPNG_ERROR) {
            bool bad;
            const char *why = cap_pcapng_error(r, &bad);
            CHECK((rc == CAP_PCAPNG_ERROR) == (why[0] != '\0'));
            CHECK(strchr(why, '\n') == NULL);
            break;
        }
    }
    CHECK(frames <= size / 16);
    CHECK(cap_pcapng_offset(r) <= size);
    cap_pcapng_close(r);
    return 0;
}

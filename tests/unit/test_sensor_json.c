/* test_sensor_json.c — the events' hand-written number and time formatting (sj_u64, sj_time in
 * sensor/sensor_events.c) against the C library's printf and strftime on the same values: edges,
 * a sweep across seconds (the per-second cache must never serve a stale second), and random
 * times over the whole range of int64_t nanoseconds (1677 to 2262), negative ones included. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "sensor/sensor_internal.h"

/* The formatting sj_time replaced: strftime for the calendar part, printf for the fraction. */
static void reference_time(int64_t ns, char *out, size_t size)
{
    int64_t sec = ns / 1000000000, rem = ns % 1000000000;
    if (rem < 0) {
        sec--;
        rem += 1000000000;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    assert_non_null(gmtime_r(&t, &tm));
    size_t n = strftime(out, size, "\"%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, size - n, ".%06d+0000\"", (int)(rem / 1000));
}

static void expect_time(int64_t ns)
{
    char buf[128], want[128];
    struct sensor_json j;
    sj_init(&j, buf, sizeof buf);
    sj_time(&j, ns);
    reference_time(ns, want, sizeof want);
    if (strcmp(buf, want) != 0)
        fail_msg("sj_time(%" PRId64 ") = %s, want %s", ns, buf, want);
}

static void expect_u64(uint64_t v)
{
    char buf[64], want[64];
    struct sensor_json j;
    sj_init(&j, buf, sizeof buf);
    sj_u64(&j, v);
    snprintf(want, sizeof want, "%" PRIu64, v);
    if (strcmp(buf, want) != 0)
        fail_msg("sj_u64(%" PRIu64 ") = %s, want %s", v, buf, want);
}

static uint64_t next_random(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static void test_u64(void **state)
{
    (void)state;
    const uint64_t edges[] = {0, 1, 9, 10, 99, 100, 65535, 65536, 4294967295u, 4294967296u, 999999999999999999u,
                              1000000000000000000u, UINT64_MAX - 1, UINT64_MAX};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        expect_u64(edges[i]);
    uint64_t r = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < 100000; i++) {
        const uint64_t v = next_random(&r);
        expect_u64(v >> (v % 64)); /* all magnitudes */
    }
}

static void test_time_edges(void **state)
{
    (void)state;
    const int64_t edges[] = {0,
                             1,
                             999,
                             1000,
                             999999999,
                             1000000000,
                             -1,
                             -1000,
                             -999999999,
                             -1000000000,
                             -1000000001,
                             951782400000000000,  /* 2000-02-29 */
                             1764203393123456789, /* 2025-11-27 */
                             4107542399999999999, /* 2100-02-28T23:59:59.999999999 */
                             INT64_MAX};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        expect_time(edges[i]);
}

/* Consecutive times across second and day boundaries, forwards and back: the cached calendar of
 * one second must never be used for the next. */
static void test_time_sweep(void **state)
{
    (void)state;
    const int64_t starts[] = {1764201599000000000, 1767225599000000000 /* New Year 2026 */, -86401000000000};
    for (size_t s = 0; s < sizeof starts / sizeof starts[0]; s++) {
        for (int64_t ns = starts[s]; ns < starts[s] + 3000000000; ns += 123456789)
            expect_time(ns);
        for (int64_t ns = starts[s] + 3000000000; ns > starts[s]; ns -= 987654321)
            expect_time(ns);
    }
}

static void test_time_random(void **state)
{
    (void)state;
    uint64_t r = 0x243f6a8885a308d3u;
    /* every second whose nanoseconds fit in int64_t: 1677 to 2262 */
    const int64_t span = INT64_MAX / 1000000000 - 1;
    for (int i = 0; i < 200000; i++) {
        const int64_t sec = (int64_t)(next_random(&r) % (uint64_t)span) - (i % 4 == 0 ? span : 0);
        expect_time(sec * 1000000000 + (int64_t)(next_random(&r) % 1000000000));
    }
}

/* A value that does not fit is an overflow, never a cut line. */
static void test_overflow(void **state)
{
    (void)state;
    char buf[24];
    struct sensor_json j;
    sj_init(&j, buf, sizeof buf);
    sj_time(&j, 1764203393123456789);
    assert_true(j.overflow);
    sj_init(&j, buf, 8);
    sj_u64(&j, 1234567);
    assert_false(j.overflow);
    assert_string_equal(buf, "1234567");
    sj_u64(&j, 1);
    assert_true(j.overflow);
    assert_string_equal(buf, "1234567");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_u64),
        cmocka_unit_test(test_time_edges),
        cmocka_unit_test(test_time_sweep),
        cmocka_unit_test(test_time_random),
        cmocka_unit_test(test_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

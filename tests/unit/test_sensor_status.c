/* test_sensor_status.c — the sensor's STATUS= line for `systemctl status` (sensor_status_line):
 * the rates as before, and the frames and packets lost since start only when there are any, each
 * named, so that an operator sees capture drops and refused flows without the stats events. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "sensor/sensor_internal.h"

static const char *line(const struct sensor_status *s)
{
    static char buf[320];
    sensor_status_line(buf, sizeof buf, s);
    return buf;
}

static void test_without_losses(void **state)
{
    (void)state;
    struct sensor_status s = {.packets_per_s = 1234.4, .classified_per_s = 5.26, .skipped = 3, .queued = 7};
    assert_string_equal(line(&s), "STATUS=1234 packets/s, 5.3 sessions/s classified, 3 skipped, 7 queued");
    s.no_model = true;
    assert_string_equal(line(&s), "STATUS=1234 packets/s (no model: flow events only)");
}

static void test_losses_named_when_there_are_some(void **state)
{
    (void)state;
    struct sensor_status s = {.packets_per_s = 10, .classified_per_s = 1, .capture_drops = 120};
    assert_string_equal(line(&s), "STATUS=10 packets/s, 1.0 sessions/s classified, 0 skipped, 0 queued; "
                                  "lost since start: 120 frames dropped by the capture");
    s.refused_packets = 7;
    assert_string_equal(line(&s), "STATUS=10 packets/s, 1.0 sessions/s classified, 0 skipped, 0 queued; "
                                  "lost since start: 120 frames dropped by the capture, 7 packets of new flows "
                                  "refused (no free flow record)");
    s.capture_drops = 0;
    s.no_model = true;
    assert_string_equal(line(&s), "STATUS=10 packets/s (no model: flow events only); lost since start: 7 packets "
                                  "of new flows refused (no free flow record)");
}

static void test_a_short_buffer_is_cut_not_overrun(void **state)
{
    (void)state;
    const struct sensor_status s = {.packets_per_s = 1e9, .capture_drops = UINT64_MAX, .refused_packets = UINT64_MAX};
    char buf[48 + 8];
    memset(buf, 'x', sizeof buf);
    sensor_status_line(buf, 48, &s);
    assert_int_equal(strlen(buf), 47);
    assert_memory_equal(buf + 48, "xxxxxxxx", 8);
    for (size_t size = 1; size < 240; size++) { /* every cut point: terminated inside the size */
        char b[240];
        memset(b, 'x', sizeof b);
        sensor_status_line(b, size, &s);
        assert_true(memchr(b, '\0', size) != NULL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_without_losses),
        cmocka_unit_test(test_losses_named_when_there_are_some),
        cmocka_unit_test(test_a_short_buffer_is_cut_not_overrun),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

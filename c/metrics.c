/*
 * app_elevenlabs_convai -- Prometheus metrics, when res_prometheus is loaded.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * Low cardinality on purpose: no per-call or per-agent labels, only the final status. The
 * values are kept here whether or not anyone scrapes them; res_prometheus calls
 * metrics_render() on each scrape of its HTTP route.
 *
 * res_prometheus is optional. Its functions are referenced weakly: when it is not loaded
 * they resolve to NULL and this file does nothing, so the module loads and runs without it.
 */

#include "asterisk.h"

#include <stdatomic.h>

#include "asterisk/res_prometheus.h"
#include "asterisk/strings.h"

#include "convai_shared.h"
#include "metrics.h"

#pragma weak prometheus_callback_register
#pragma weak prometheus_callback_unregister
#pragma weak prometheus_metric_to_string

/* The final statuses, as labels: COMPLETED, HANGUP, FAILED (enum convai_status from 1). */
#define STATUS_FIRST CONVAI_STATUS_COMPLETED
#define STATUS_MAX (CONVAI_STATUS_MAX - STATUS_FIRST)
static const char *transfer_results[CONVAI_TRANSFER_RESULT_MAX] = {
	[CONVAI_TRANSFER_BLIND] = "blind", [CONVAI_TRANSFER_REFER] = "refer",
	[CONVAI_TRANSFER_ANSWERED] = "answered", [CONVAI_TRANSFER_FAILED] = "failed",
};
#define FAMILY_MAX 4   /* the most label values of one family */

/* Upper bounds, in seconds and in µs, of the first-audio latency histogram's buckets. */
static const char *bucket_le[] = { "0.005", "0.01", "0.02", "0.05", "0.1", "0.25", "1" };
static const uint64_t bucket_us[] = { 5000, 10000, 20000, 50000, 100000, 250000, 1000000 };
#define NBUCKETS ARRAY_LEN(bucket_us)

static struct {
	_Atomic int64_t active;
	_Atomic uint64_t calls[STATUS_MAX];
	_Atomic uint64_t interruptions;
	_Atomic uint64_t underruns;
	_Atomic uint64_t first_audio[NBUCKETS + 1];   /* per bucket, the last is +Inf */
	_Atomic uint64_t first_audio_sum_us;
	_Atomic uint64_t transfers[CONVAI_TRANSFER_RESULT_MAX];
} m;

static int registered;

void convai_metrics_call_started(void)
{
	atomic_fetch_add(&m.active, 1);
}

void convai_metrics_call_ended(int status, uint64_t interruptions, uint64_t underruns,
	const uint32_t *first_frame)
{
	int b;

	atomic_fetch_sub(&m.active, 1);
	if (status >= STATUS_FIRST && status < CONVAI_STATUS_MAX) {
		atomic_fetch_add(&m.calls[status - STATUS_FIRST], 1);
	}
	atomic_fetch_add(&m.interruptions, interruptions);
	atomic_fetch_add(&m.underruns, underruns);
	for (b = 0; b < CONVAI_HIST_BUCKETS; b++) {
		uint64_t upper = convai_hist_upper(b);
		size_t i = 0;

		if (!first_frame[b]) {
			continue;
		}
		while (i < NBUCKETS && upper > bucket_us[i]) {
			i++;
		}
		atomic_fetch_add(&m.first_audio[i], first_frame[b]);
		atomic_fetch_add(&m.first_audio_sum_us, (uint64_t) first_frame[b] * upper);
	}
}

/*
 * One metric, or a family of \a n metrics that share a name and differ by one label (the
 * first is the parent, the rest its children, so HELP and TYPE are printed once).
 */
void convai_metrics_call_failed_early(void)
{
	atomic_fetch_add(&m.calls[CONVAI_STATUS_FAILED - STATUS_FIRST], 1);
}

void convai_metrics_transfer(enum convai_transfer_result result)
{
	atomic_fetch_add(&m.transfers[result], 1);
}

static void render_family(struct ast_str **out, enum prometheus_metric_type type,
	const char *name, const char *help, const char *label, const char **values,
	const uint64_t *v, int n)
{
	struct prometheus_metric metrics[FAMILY_MAX];
	int i;

	for (i = 0; i < n && i < FAMILY_MAX; i++) {
		struct prometheus_metric *metric = &metrics[i];

		*metric = (struct prometheus_metric) PROMETHEUS_METRIC_STATIC_INITIALIZATION(type, "",
			help, NULL);
		ast_copy_string(metric->name, name, sizeof(metric->name));
		if (label) {
			PROMETHEUS_METRIC_SET_LABEL(metric, 0, label, values[i]);
		}
		snprintf(metric->value, sizeof(metric->value), "%" PRIu64, v[i]);
		if (i) {
			AST_LIST_INSERT_TAIL(&metrics[0].children, metric, entry);
		}
	}
	prometheus_metric_to_string(&metrics[0], out);
}

/* A histogram in the exposition format: res_prometheus's API has counters and gauges only. */
static void render_first_audio(struct ast_str **out)
{
	uint64_t cumulative = 0;
	size_t i;

	ast_str_append(out, 0, "# HELP asterisk_elevenlabs_first_audio_seconds Agent audio "
		"received to its first frame written to the caller.\n"
		"# TYPE asterisk_elevenlabs_first_audio_seconds histogram\n");
	for (i = 0; i <= NBUCKETS; i++) {
		cumulative += atomic_load(&m.first_audio[i]);
		ast_str_append(out, 0, "asterisk_elevenlabs_first_audio_seconds_bucket{le=\"%s\"} %"
			PRIu64 "\n", i < NBUCKETS ? bucket_le[i] : "+Inf", cumulative);
	}
	ast_str_append(out, 0, "asterisk_elevenlabs_first_audio_seconds_sum %.6f\n"
		"asterisk_elevenlabs_first_audio_seconds_count %" PRIu64 "\n",
		atomic_load(&m.first_audio_sum_us) / 1e6, cumulative);
}

static void metrics_render(struct ast_str **out)
{
	uint64_t v[STATUS_MAX];
	const char *status_names[STATUS_MAX];
	int s;

	v[0] = (uint64_t) MAX(atomic_load(&m.active), 0);
	render_family(out, PROMETHEUS_METRIC_GAUGE, "asterisk_elevenlabs_active_calls",
		"Conversations under way.", NULL, NULL, v, 1);
	for (s = 0; s < STATUS_MAX; s++) {
		v[s] = atomic_load(&m.calls[s]);
		status_names[s] = convai_status_name(s + STATUS_FIRST);
	}
	render_family(out, PROMETHEUS_METRIC_COUNTER, "asterisk_elevenlabs_calls_total",
		"Conversations ended, by final status.", "status", status_names, v, STATUS_MAX);
	v[0] = atomic_load(&m.interruptions);
	render_family(out, PROMETHEUS_METRIC_COUNTER, "asterisk_elevenlabs_interruptions_total",
		"Times callers interrupted the agent.", NULL, NULL, v, 1);
	v[0] = atomic_load(&m.underruns);
	render_family(out, PROMETHEUS_METRIC_COUNTER, "asterisk_elevenlabs_underruns_total",
		"Playout ticks with agent audio waiting but none ready.", NULL, NULL, v, 1);
	for (s = 0; s < CONVAI_TRANSFER_RESULT_MAX; s++) {
		v[s] = atomic_load(&m.transfers[s]);
	}
	render_family(out, PROMETHEUS_METRIC_COUNTER, "asterisk_elevenlabs_transfers_total",
		"Transfers by the agent's transfer tool: blind (dialplan), refer (SIP REFER), answered "
		"(warm, bridged) and failed (refused, not answered, busy, REFER rejected).", "result",
		transfer_results, v, CONVAI_TRANSFER_RESULT_MAX);
	render_first_audio(out);
}

static struct prometheus_callback callback = {
	.name = "app_elevenlabs_convai",
	.callback_fn = metrics_render,
};

int convai_metrics_register(void)
{
	if (!prometheus_callback_register || !prometheus_metric_to_string
		|| prometheus_callback_register(&callback)) {
		return 0;
	}
	registered = 1;
	return 1;
}

void convai_metrics_unregister(void)
{
	if (registered && prometheus_callback_unregister) {
		prometheus_callback_unregister(&callback);
		registered = 0;
	}
}

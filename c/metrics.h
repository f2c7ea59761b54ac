/*
 * app_elevenlabs_convai -- Prometheus metrics, when res_prometheus is loaded.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 */
#ifndef CONVAI_METRICS_H
#define CONVAI_METRICS_H

#include <stdint.h>

/*! \brief Register with res_prometheus if it is loaded; returns 1 if it is, 0 if not. */
int convai_metrics_register(void);
void convai_metrics_unregister(void);

void convai_metrics_call_started(void);

/*!
 * \brief Account for a finished call.
 * \param status CONVAI_STATUS_COMPLETED, _HANGUP, _FAILED or _TRANSFER
 * \param first_frame the call's first-frame latency histogram (CONVAI_HIST_BUCKETS buckets)
 */
void convai_metrics_call_ended(int status, uint64_t interruptions, uint64_t underruns,
	const uint32_t *first_frame);

/*! \brief A call that failed before its conversation could start (unknown agent, ...). */
void convai_metrics_call_failed_early(void);

enum convai_transfer_result {
	CONVAI_TRANSFER_BLIND,      /* continued at the dialplan target */
	CONVAI_TRANSFER_REFER,      /* the caller's phone accepted a SIP REFER */
	CONVAI_TRANSFER_ANSWERED,   /* warm: the target answered, caller bridged */
	CONVAI_TRANSFER_FAILED,     /* refused, not answered, busy, REFER rejected */
	CONVAI_TRANSFER_RESULT_MAX
};

void convai_metrics_transfer(enum convai_transfer_result result);

#endif /* CONVAI_METRICS_H */

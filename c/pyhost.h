/*
 * app_elevenlabs_convai -- the embedded Python runtime, as seen from the Asterisk side.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * Neutral header: no Asterisk and no Python types, so either translation unit can include it.
 */
#ifndef CONVAI_PYHOST_H
#define CONVAI_PYHOST_H

#include <stddef.h>

struct convai_host;

/*!
 * \brief Start Python on its owner thread, import convai.host and boot it with \a host.
 * \param python_dir directory holding the `convai` package (put first on sys.path)
 * \param timeout_ms how long to wait for the runtime to report ready
 * \param err receives one line naming what is missing or broken on failure
 * \retval 0 the runtime is up and running its asyncio loop
 * \retval -1 it is not; the owner thread has exited and Asterisk is untouched
 */
int convai_pyhost_start(struct convai_host *host, const char *python_dir, int timeout_ms,
	char *err, size_t errlen);

/*!
 * \brief Ask the loop to stop (host->stop must already be set and the wake fd written)
 * and wait up to \a timeout_ms for the owner thread to end. Python is never finalised.
 * \retval 0 the thread ended, -1 it is still running
 */
int convai_pyhost_join(int timeout_ms);

/*! \brief "3.14.10 (…)" once started, else "" */
const char *convai_pyhost_version(void);

#endif /* CONVAI_PYHOST_H */

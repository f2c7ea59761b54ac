/*
 * app_elevenlabs_convai -- the embedded CPython runtime and its owner thread.
 *
 * Copyright (C) 2026, the app_elevenlabs_convai authors
 * This program is free software, distributed under the terms of the GNU General Public License
 * Version 2. See the LICENSE file at the top of the source tree.
 *
 * Python.h insists on coming first and asterisk.h forbids libc allocation, so everything that
 * touches the interpreter lives here, in a translation unit with no Asterisk headers.
 *
 * The owner thread is Python's main thread for the life of the process: it promotes libpython
 * to the global symbol scope (Asterisk dlopen()s modules RTLD_LOCAL, and Debian's extension
 * modules such as _ssl, _asyncio and _cffi_backend expect Py* symbols globally), initialises
 * an isolated interpreter without signal handlers, boots convai.host and runs its loop. The
 * interpreter is never finalised: extensions do not survive a second initialisation.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "convai_shared.h"
#include "pyhost.h"

enum owner_state { OWNER_STARTING, OWNER_READY, OWNER_FAILED, OWNER_EXITED };

static struct {
	pthread_t thread;
	int thread_live;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum owner_state state;
	char err[512];
	char dir[1024];
	char version[64];
	struct convai_host *host;
} owner = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
};

static void owner_set_state(enum owner_state state)
{
	pthread_mutex_lock(&owner.lock);
	owner.state = state;
	pthread_cond_broadcast(&owner.cond);
	pthread_mutex_unlock(&owner.lock);
}

static void owner_fail(const char *fmt, const char *detail)
{
	snprintf(owner.err, sizeof(owner.err), fmt, detail);
}

#if PY_VERSION_HEX < 0x030C0000
/* Python 3.11 lacks PyErr_GetRaisedException (3.12+): the same from the (type, value, tb) API. */
static PyObject *PyErr_GetRaisedException(void)
{
	PyObject *type, *value, *tb;

	PyErr_Fetch(&type, &value, &tb);
	if (!type) {
		return NULL;
	}
	PyErr_NormalizeException(&type, &value, &tb);
	if (value && tb) {
		PyException_SetTraceback(value, tb);
	}
	Py_XDECREF(type);
	Py_XDECREF(tb);
	return value;
}
#endif

/* Turn the pending Python exception into one line: "ModuleNotFoundError: No module named 'x'". */
static void owner_fail_from_exception(const char *what)
{
	PyObject *exc = PyErr_GetRaisedException();
	PyObject *text = exc ? PyObject_Str(exc) : NULL;
	const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;

	snprintf(owner.err, sizeof(owner.err), "%s: %s: %s", what,
		exc ? Py_TYPE(exc)->tp_name : "error", msg ? msg : "(no message)");
	PyErr_Clear();
	Py_XDECREF(text);
	Py_XDECREF(exc);
}

static int promote_libpython(void)
{
	Dl_info info;

	if (!dladdr((void *) &Py_InitializeFromConfig, &info) || !info.dli_fname) {
		owner_fail("%s", "cannot locate libpython (dladdr failed)");
		return -1;
	}
	/* RTLD_NOLOAD re-flags the copy already mapped; the handle is kept for ever on purpose. */
	if (!dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL)) {
		owner_fail("cannot promote libpython to the global scope: %s", dlerror());
		return -1;
	}
	return 0;
}

static int init_interpreter(void)
{
	PyConfig config;
	PyStatus status;

	PyConfig_InitIsolatedConfig(&config);
	config.install_signal_handlers = 0;   /* Asterisk owns SIGINT/SIGTERM/SIGHUP */
	config.site_import = 1;               /* Debian's dist-packages hold our dependencies */
	config.user_site_directory = 0;
	config.parse_argv = 0;
	config.configure_c_stdio = 0;
	status = PyConfig_SetBytesString(&config, &config.program_name, "asterisk");
	if (!PyStatus_Exception(status)) {
		status = Py_InitializeFromConfig(&config);
	}
	PyConfig_Clear(&config);
	if (PyStatus_Exception(status)) {
		owner_fail("Python initialisation failed: %s", status.err_msg ? status.err_msg : "?");
		return -1;
	}
	return 0;
}

/* Call convai.deps.FUNC(); a new reference to its result, or NULL with owner.err set. */
static PyObject *call_deps(const char *func)
{
	PyObject *deps = PyImport_ImportModule("convai.deps");
	PyObject *res;

	if (!deps) {
		owner_fail_from_exception("cannot import convai.host (convai.deps)");
		return NULL;
	}
	res = PyObject_CallMethod(deps, func, NULL);
	Py_DECREF(deps);
	if (!res) {
		owner_fail_from_exception("convai.deps failed");
	}
	return res;
}

/* Before anything imports a dependency: a version too old declines with deps.check()'s line
 * (package, version found, minimum, fix). Importing it first would leave the old one in the
 * interpreter, which outlives this load attempt. */
static int check_dependencies(void)
{
	PyObject *res = call_deps("check");
	const char *line;

	if (!res) {
		return -1;
	}
	if (res == Py_None) {
		Py_DECREF(res);
		return 0;
	}
	line = PyUnicode_Check(res) ? PyUnicode_AsUTF8(res) : NULL;
	owner_fail("%s", line ? line : "convai.deps.check() returned no text");
	PyErr_Clear();
	Py_DECREF(res);
	return -1;
}

/* After a failed import: say so when a restart of Asterisk is needed before the next load. */
static void append_restart_note(void)
{
	char first[sizeof(owner.err)];
	PyObject *res;
	const char *note;

	snprintf(first, sizeof(first), "%s", owner.err);
	res = call_deps("restart_note");
	note = res && PyUnicode_Check(res) ? PyUnicode_AsUTF8(res) : NULL;
	snprintf(owner.err, sizeof(owner.err), "%s%s", first, note ? note : "");
	PyErr_Clear();
	Py_XDECREF(res);
}

/* Import convai.host from owner.dir and boot it; returns a new reference to the module. */
static PyObject *boot_host(void)
{
	PyObject *sys_path = PySys_GetObject("path");   /* borrowed */
	PyObject *dir = PyUnicode_DecodeFSDefault(owner.dir);
	PyObject *mod, *res;

	if (!sys_path || !dir || PyList_Insert(sys_path, 0, dir)) {
		Py_XDECREF(dir);
		owner_fail_from_exception("cannot extend sys.path");
		return NULL;
	}
	Py_DECREF(dir);
	if (check_dependencies()) {
		return NULL;
	}
	mod = PyImport_ImportModule("convai.host");
	if (!mod) {
		owner_fail_from_exception("cannot import convai.host");
		append_restart_note();
		return NULL;
	}
	res = PyObject_CallMethod(mod, "boot", "K", (unsigned long long) (uintptr_t) owner.host);
	if (!res) {
		owner_fail_from_exception("convai.host.boot() failed");
		Py_DECREF(mod);
		return NULL;
	}
	Py_DECREF(res);
	return mod;
}

static void *owner_main(void *unused)
{
	int fresh;
	PyGILState_STATE gil = PyGILState_UNLOCKED;
	PyObject *mod, *res;

	(void) unused;
	pthread_setname_np(pthread_self(), "convai-python");   /* as `top -H` shows it */
	if (promote_libpython()) {
		owner_set_state(OWNER_FAILED);
		return NULL;
	}
	/* A failed load leaves an initialised interpreter behind; a later load reuses it. */
	fresh = !Py_IsInitialized();
	if (fresh) {
		if (init_interpreter()) {
			owner_set_state(OWNER_FAILED);
			return NULL;
		}
	} else {
		gil = PyGILState_Ensure();
	}
	snprintf(owner.version, sizeof(owner.version), "%s", Py_GetVersion());
	mod = boot_host();
	if (!mod) {
		owner_set_state(OWNER_FAILED);
		goto release;
	}
	owner_set_state(OWNER_READY);
	res = PyObject_CallMethod(mod, "run", NULL);
	if (!res) {
		/* host.run() logs its own failures; this is the last resort. */
		PyErr_Print();
	}
	Py_XDECREF(res);
	Py_DECREF(mod);
	owner_set_state(OWNER_EXITED);
release:
	if (fresh) {
		PyEval_SaveThread();
	} else {
		PyGILState_Release(gil);
	}
	return NULL;
}

static struct timespec deadline_in(int timeout_ms)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	t.tv_sec += timeout_ms / 1000;
	t.tv_nsec += (long) (timeout_ms % 1000) * 1000000L;
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	return t;
}

/* The owner thread: 8 MiB of stack, never realtime, every signal blocked. Returns errno. */
static int owner_spawn(void)
{
	/*
	 * Never realtime, even under `asterisk -p`: the rings hold seconds of audio, so Python can
	 * wait, while a channel thread that owes a frame every 20 ms must never wait behind it.
	 */
	struct sched_param normal = { .sched_priority = 0 };
	pthread_attr_t attr;
	sigset_t all, old;
	int rc;

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 8 * 1024 * 1024);
	pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
	pthread_attr_setschedpolicy(&attr, SCHED_OTHER);
	pthread_attr_setschedparam(&attr, &normal);
	/* The thread inherits this mask: no Asterisk signal is ever delivered to Python. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	rc = pthread_create(&owner.thread, &attr, owner_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	return rc;
}

/* Wait up to timeout_ms for the owner thread to leave OWNER_STARTING. */
static void owner_wait_started(int timeout_ms)
{
	struct timespec deadline = deadline_in(timeout_ms);
	int rc = 0;

	pthread_mutex_lock(&owner.lock);
	while (owner.state == OWNER_STARTING && rc != ETIMEDOUT) {
		rc = pthread_cond_timedwait(&owner.cond, &owner.lock, &deadline);
	}
	pthread_mutex_unlock(&owner.lock);
}

int convai_pyhost_start(struct convai_host *host, const char *python_dir, int timeout_ms,
	char *err, size_t errlen)
{
	int rc;

	if (owner.thread_live) {
		snprintf(err, errlen, "the Python runtime is already running");
		return -1;
	}
	owner.host = host;
	owner.state = OWNER_STARTING;
	owner.err[0] = '\0';
	snprintf(owner.dir, sizeof(owner.dir), "%s", python_dir);
	if ((rc = owner_spawn())) {
		snprintf(err, errlen, "cannot start the Python owner thread: %s", strerror(rc));
		return -1;
	}
	owner.thread_live = 1;
	owner_wait_started(timeout_ms);
	if (owner.state == OWNER_READY) {
		return 0;
	}
	if (owner.state == OWNER_STARTING) {
		/* Still importing: it cannot be cancelled safely, so it is left to finish or hang. */
		snprintf(err, errlen, "the Python runtime did not start within %d ms", timeout_ms);
		return -1;
	}
	pthread_join(owner.thread, NULL);
	owner.thread_live = 0;
	snprintf(err, errlen, "%s", owner.err[0] ? owner.err : "unknown failure");
	return -1;
}

int convai_pyhost_join(int timeout_ms)
{
	struct timespec deadline;

	if (!owner.thread_live) {
		return 0;
	}
	deadline = deadline_in(timeout_ms);
	if (pthread_timedjoin_np(owner.thread, NULL, &deadline)) {
		return -1;
	}
	owner.thread_live = 0;
	return 0;
}

const char *convai_pyhost_version(void)
{
	return owner.version;
}

/*
 * db_vfs.c - the "gr" SQLite VFS: the default unix VFS, with the appends to a WAL file
 * gathered into one write per commit.
 *
 * SQLite writes each frame of a commit to the WAL as two pwrite calls (a 24-byte header, then
 * the page), so a group-commit batch of a few dozen pages costs a hundred system calls while
 * it holds the database's write lock. This shim keeps the contiguous appends of a WAL handle
 * in a buffer (at most WAL_BUF bytes) and writes them out in one call when anything else
 * touches the file (a read, a write elsewhere, a truncate, a sync, its size, its close) and,
 * above all, at the database file's xShmBarrier: walIndexWriteHdr calls it between its two
 * copies of the new wal-index header, before a commit becomes visible to any reader, so no
 * reader (of this process or another) can see a frame that is not in the file yet, and a
 * commit is in the kernel's page cache when sqlite3_step returns (what synchronous=NORMAL
 * promises; with FULL the xSync that follows flushes first). A failed flush is reported by
 * the barrier's next file operation: the buffer is kept and the WAL write error surfaces at
 * the following xWrite/xSync/xRead, which SQLite handles as an I/O error on the transaction.
 * Only files opened with SQLITE_OPEN_WAL buffer; every other call is the unix VFS's.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "db_int.h"
#include "gr/arena.h"

#define WAL_BUF (1u << 20) /* bytes of WAL appends gathered at most */
/* The unix VFS writes at most 128 KiB - 1 per call (seekAndWrite masks the count). */
#define WAL_CHUNK ((size_t)120 << 10)

struct gfile {
    sqlite3_file base;   /* our methods */
    sqlite3_file *real;  /* the unix VFS's file, allocated after this struct */
    struct gfile *wal;   /* main database file: its open WAL handle, if any */
    struct gfile *owner; /* WAL handle: the main database file it belongs to */
    bool is_wal;
    unsigned char *buf; /* WAL: appends not yet written */
    sqlite3_int64 buf_off;
    size_t buf_len;
    int err; /* WAL: the error of a flush that failed, reported by the next call */
};

static sqlite3_vfs gr_vfs;
static sqlite3_vfs *unix_vfs;

static int flush(struct gfile *f)
{
    int rc;

    if (!f || f->buf_len == 0)
        return f && f->err ? f->err : SQLITE_OK;
    for (size_t done = 0; done < f->buf_len; done += WAL_CHUNK) {
        size_t n = f->buf_len - done < WAL_CHUNK ? f->buf_len - done : WAL_CHUNK;

        rc = f->real->pMethods->xWrite(f->real, f->buf + done, (int)n,
                                       f->buf_off + (sqlite3_int64)done);
        if (rc != SQLITE_OK) {
            f->err = rc; /* the whole buffer is written again by the next flush */
            return rc;
        }
    }
    f->buf_len = 0;
    f->err = SQLITE_OK;
    return SQLITE_OK;
}

static int g_close(sqlite3_file *p)
{
    struct gfile *f = (struct gfile *)p;
    int rc = flush(f), rc2;

    if (f->is_wal && f->owner && f->owner->wal == f)
        f->owner->wal = NULL;
    if (!f->is_wal && f->wal)
        f->wal->owner = NULL;
    rc2 = f->real->pMethods ? f->real->pMethods->xClose(f->real) : SQLITE_OK;
    gr_free(f->buf);
    f->buf = NULL;
    return rc != SQLITE_OK ? rc : rc2;
}

static int g_read(sqlite3_file *p, void *out, int n, sqlite3_int64 off)
{
    struct gfile *f = (struct gfile *)p;
    int rc = flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, out, n, off);
}

static int g_write(sqlite3_file *p, const void *in, int n, sqlite3_int64 off)
{
    struct gfile *f = (struct gfile *)p;
    int rc;

    if (f->is_wal && n > 0 && (size_t)n <= WAL_BUF) {
        if (f->buf_len > 0 && off == f->buf_off + (sqlite3_int64)f->buf_len &&
            f->buf_len + (size_t)n <= WAL_BUF) {
            memcpy(f->buf + f->buf_len, in, (size_t)n);
            f->buf_len += (size_t)n;
            return SQLITE_OK;
        }
        rc = flush(f);
        if (rc != SQLITE_OK)
            return rc;
        if (!f->buf)
            f->buf = gr_xmalloc(WAL_BUF);
        memcpy(f->buf, in, (size_t)n);
        f->buf_off = off;
        f->buf_len = (size_t)n;
        return SQLITE_OK;
    }
    rc = flush(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xWrite(f->real, in, n, off);
}

static int g_truncate(sqlite3_file *p, sqlite3_int64 size)
{
    struct gfile *f = (struct gfile *)p;
    int rc = flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int g_sync(sqlite3_file *p, int flags)
{
    struct gfile *f = (struct gfile *)p;
    int rc = flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int g_size(sqlite3_file *p, sqlite3_int64 *size)
{
    struct gfile *f = (struct gfile *)p;
    int rc = flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int g_lock(sqlite3_file *p, int l)
{
    struct gfile *f = (struct gfile *)p;

    return f->real->pMethods->xLock(f->real, l);
}

static int g_unlock(sqlite3_file *p, int l)
{
    struct gfile *f = (struct gfile *)p;

    return f->real->pMethods->xUnlock(f->real, l);
}

static int g_reserved(sqlite3_file *p, int *out)
{
    struct gfile *f = (struct gfile *)p;

    return f->real->pMethods->xCheckReservedLock(f->real, out);
}

static int g_fcntl(sqlite3_file *p, int op, void *arg)
{
    struct gfile *f = (struct gfile *)p;
    int rc = flush(f);

    if (rc != SQLITE_OK)
        return rc;
    rc = f->real->pMethods->xFileControl(f->real, op, arg);
    if (rc == SQLITE_OK && op == SQLITE_FCNTL_VFSNAME) {
        char *inner = *(char **)arg;

        *(char **)arg = sqlite3_mprintf("gr/%z", inner);
    }
    return rc;
}

static int g_sector(sqlite3_file *p)
{
    struct gfile *f = (struct gfile *)p;

    return f->real->pMethods->xSectorSize(f->real);
}

static int g_devchar(sqlite3_file *p)
{
    struct gfile *f = (struct gfile *)p;

    return f->real->pMethods->xDeviceCharacteristics(f->real);
}

static int g_shm_map(sqlite3_file *p, int pg, int pgsz, int extend, void volatile **out)
{
    struct gfile *f = (struct gfile *)p;

    return f->real->pMethods->xShmMap(f->real, pg, pgsz, extend, out);
}

static int g_shm_lock(sqlite3_file *p, int off, int n, int flags)
{
    struct gfile *f = (struct gfile *)p;

    return f->real->pMethods->xShmLock(f->real, off, n, flags);
}

/* Before a new wal-index header is published: the frames it names go to the file first. */
static void g_shm_barrier(sqlite3_file *p)
{
    struct gfile *f = (struct gfile *)p;

    (void)flush(f->wal); /* an error stays in f->wal->err and fails its next operation */
    f->real->pMethods->xShmBarrier(f->real);
}

static int g_shm_unmap(sqlite3_file *p, int del)
{
    struct gfile *f = (struct gfile *)p;

    return f->real->pMethods->xShmUnmap(f->real, del);
}

static int g_fetch(sqlite3_file *p, sqlite3_int64 off, int n, void **out)
{
    struct gfile *f = (struct gfile *)p;
    int rc = flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xFetch(f->real, off, n, out);
}

static int g_unfetch(sqlite3_file *p, sqlite3_int64 off, void *ptr)
{
    struct gfile *f = (struct gfile *)p;

    return f->real->pMethods->xUnfetch(f->real, off, ptr);
}

static const sqlite3_io_methods g_methods = {
    3,          g_close,       g_read,      g_write, g_truncate, g_sync,    g_size,
    g_lock,     g_unlock,      g_reserved,  g_fcntl, g_sector,   g_devchar, g_shm_map,
    g_shm_lock, g_shm_barrier, g_shm_unmap, g_fetch, g_unfetch,
};

static int g_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *p, int flags,
                  int *out_flags)
{
    struct gfile *f = (struct gfile *)p;
    int rc;

    (void)vfs;
    memset(f, 0, sizeof(*f));
    f->real = (sqlite3_file *)(f + 1);
    rc = unix_vfs->xOpen(unix_vfs, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK || !f->real->pMethods) {
        /* xClose is called only when pMethods is set: leave it NULL (nothing to close). */
        if (f->real->pMethods)
            f->real->pMethods->xClose(f->real);
        f->base.pMethods = NULL;
        return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
    }
    f->base.pMethods = &g_methods;
    if ((flags & SQLITE_OPEN_WAL) && name) {
        struct gfile *db = (struct gfile *)sqlite3_database_file_object(name);

        if (db && db->base.pMethods == &g_methods) {
            f->is_wal = true;
            f->owner = db;
            db->wal = f;
        }
    }
    return SQLITE_OK;
}

static int g_delete(sqlite3_vfs *v, const char *name, int sync)
{
    (void)v;
    return unix_vfs->xDelete(unix_vfs, name, sync);
}

static int g_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
    (void)v;
    return unix_vfs->xAccess(unix_vfs, name, flags, out);
}

static int g_fullpath(sqlite3_vfs *v, const char *name, int n, char *out)
{
    (void)v;
    return unix_vfs->xFullPathname(unix_vfs, name, n, out);
}

static void *g_dlopen(sqlite3_vfs *v, const char *name)
{
    (void)v;
    return unix_vfs->xDlOpen(unix_vfs, name);
}

static void g_dlerror(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    unix_vfs->xDlError(unix_vfs, n, out);
}

static void (*g_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
    (void)v;
    return unix_vfs->xDlSym(unix_vfs, h, sym);
}

static void g_dlclose(sqlite3_vfs *v, void *h)
{
    (void)v;
    unix_vfs->xDlClose(unix_vfs, h);
}

static int g_random(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return unix_vfs->xRandomness(unix_vfs, n, out);
}

static int g_sleep(sqlite3_vfs *v, int us)
{
    (void)v;
    return unix_vfs->xSleep(unix_vfs, us);
}

static int g_time(sqlite3_vfs *v, double *out)
{
    (void)v;
    return unix_vfs->xCurrentTime(unix_vfs, out);
}

static int g_lasterr(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return unix_vfs->xGetLastError ? unix_vfs->xGetLastError(unix_vfs, n, out) : 0;
}

static int g_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    (void)v;
    return unix_vfs->xCurrentTimeInt64(unix_vfs, out);
}

static int vfs_rc = SQLITE_ERROR;

static void vfs_init(void)
{
    /* No global allocation statistics: they put a process-wide mutex on every malloc. */
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    unix_vfs = sqlite3_vfs_find(NULL);
    if (!unix_vfs || unix_vfs->iVersion < 2)
        return;
    gr_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)sizeof(struct gfile) + unix_vfs->szOsFile,
        .mxPathname = unix_vfs->mxPathname,
        .zName = GR_DB__VFS,
        .xOpen = g_open,
        .xDelete = g_delete,
        .xAccess = g_access,
        .xFullPathname = g_fullpath,
        .xDlOpen = g_dlopen,
        .xDlError = g_dlerror,
        .xDlSym = g_dlsym,
        .xDlClose = g_dlclose,
        .xRandomness = g_random,
        .xSleep = g_sleep,
        .xCurrentTime = g_time,
        .xGetLastError = g_lasterr,
        .xCurrentTimeInt64 = g_time64,
    };
    vfs_rc = sqlite3_vfs_register(&gr_vfs, 0);
}

const char *gr_db__vfs(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;

    pthread_once(&once, vfs_init);
    return vfs_rc == SQLITE_OK ? GR_DB__VFS : NULL;
}

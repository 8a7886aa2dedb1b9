/* The node table: the tree's directories and files, fixed before the mount,
 * and their attributes. */
#include "fusefs_int.h"

/* A node's attributes; a file's size is its configured one (fusefs_proto.c
 * attr_of gives the reader's container's instead). */
void fs_fill_attr(struct icd_fuse *f, uint32_t idx, struct fuse_attr *a)
{
  struct node *n = &f->nodes[idx];

  memset(a, 0, sizeof *a);
  a->ino = n->id;
  a->atime = a->mtime = a->ctime = (uint64_t)(f->t_start / 1000000000);
  a->blksize = 4096;
  if (n->file < 0) {
    a->mode = S_IFDIR | 0555;
    a->nlink = 2;
    return;
  }
  a->mode = S_IFREG | (f->files[n->file].writable ? 0644 : 0444);
  a->nlink = 1;
  a->size = f->files[n->file].size;
}

/* Node ids are what the kernel keeps (in its inodes and dentries) across a
 * daemon restart that hands the connection over (docs/emulation-fuse.md
 * "Hand-over"), so they depend on the path alone, not on the order files
 * were added: FNV-1a of the parent's id and the name, folded to 32 bits (a
 * 32-bit program's stat(2) fails with EOVERFLOW on a larger inode number).
 * A collision takes the next free id: the same tree always gets the same ids. */
static uint32_t path_id(uint32_t parent_id, const char *name, size_t len)
{
  uint64_t h = 0xcbf29ce484222325ULL;
  size_t i;

  for (i = 0; i < 4; i++)
    h = (h ^ ((parent_id >> (8 * i)) & 0xff)) * 0x100000001b3ULL;
  for (i = 0; i < len; i++)
    h = (h ^ (unsigned char)name[i]) * 0x100000001b3ULL;
  return (uint32_t)(h ^ (h >> 32));
}

static uint32_t *id_slot(uint32_t *tab, uint32_t cap, const struct node *nodes, uint32_t id)
{
  uint32_t i = (id * 2654435761u) & (cap - 1);

  while (tab[i] && nodes[tab[i] - 1].id != id)
    i = (i + 1) & (cap - 1);
  return &tab[i];
}

/* Enters node idx (its id set) in the id table, growing it to keep it half empty. */
static int id_insert(struct icd_fuse *f, uint32_t idx)
{
  uint32_t i, cap;
  uint32_t *tab;

  if ((f->nnodes + 1) * 2 > f->idcap) {
    cap = f->idcap ? f->idcap * 2 : 128;
    if (!(tab = calloc(cap, sizeof *tab)))
      return -ENOMEM;
    for (i = 0; i < f->idcap; i++)
      if (f->idtab[i])
        *id_slot(tab, cap, f->nodes, f->nodes[f->idtab[i] - 1].id) = f->idtab[i];
    free(f->idtab);
    f->idtab = tab;
    f->idcap = cap;
  }
  *id_slot(f->idtab, f->idcap, f->nodes, f->nodes[idx].id) = idx + 1;
  return 0;
}

int fs_node_of(struct icd_fuse *f, uint64_t nodeid, uint32_t *idx)
{
  uint32_t v;

  if (nodeid < 1 || nodeid > UINT32_MAX || !f->idcap)
    return -ENOENT;
  if (!(v = *id_slot(f->idtab, f->idcap, f->nodes, (uint32_t)nodeid)))
    return -ENOENT; /* a path a predecessor's tree had and this one has not */
  *idx = v - 1;
  return 0;
}

uint32_t fs_child_named(struct icd_fuse *f, uint32_t dir, const char *name, size_t len)
{
  uint32_t c;

  for (c = f->nodes[dir].child; c; c = f->nodes[c - 1].next)
    if (strlen(f->nodes[c - 1].name) == len && !memcmp(f->nodes[c - 1].name, name, len))
      return c;
  return 0;
}

int fs_new_node(struct icd_fuse *f, uint32_t parent, const char *name, size_t len, int32_t file)
{
  struct node *n;
  uint32_t *link;

  if (f->nnodes >= MAX_NODES)
    return -ENOSPC;
  if (f->nnodes == f->capnodes) {
    uint32_t cap = f->capnodes ? f->capnodes * 2 : 64;
    struct node *p = realloc(f->nodes, cap * sizeof *p);
    if (!p)
      return -ENOMEM;
    f->nodes = p;
    f->capnodes = cap;
  }
  n = &f->nodes[f->nnodes];
  memset(n, 0, sizeof *n);
  if (!(n->name = strndup(name, len)))
    return -ENOMEM;
  n->file = file;
  n->parent = parent + 1;
  if (!f->nnodes) {
    n->id = FUSE_ROOT_ID;
  } else {
    n->id = path_id(f->nodes[parent].id, name, len);
    for (;;) { /* 0 is no node, 1 the root */
      if (n->id <= FUSE_ROOT_ID)
        n->id = FUSE_ROOT_ID + 1;
      else if (f->idcap && *id_slot(f->idtab, f->idcap, f->nodes, n->id))
        n->id++;
      else
        break;
    }
  }
  if (id_insert(f, f->nnodes) < 0) {
    free(n->name);
    return -ENOMEM;
  }
  /* Appended, so READDIR lists entries in the order they were added. */
  if (f->nnodes) {
    for (link = &f->nodes[parent].child; *link; link = &f->nodes[*link - 1].next)
      ;
    *link = f->nnodes + 1;
  }
  return (int)f->nnodes++;
}

/* Walks `path` ('/'-separated, relative) in the tree: checks it (dry run:
 * nothing made, so a refused path leaves no directories behind) or makes
 * its missing directories and the file.  The file's node index, or -errno. */
static int make_path(struct icd_fuse *f, const char *path, int dry)
{
  uint32_t dir = 0, c = 0;
  const char *p = path, *e;
  size_t len;
  int ret, missing = 0;

  while (*p == '/')
    p++;
  for (;;) {
    e = strchrnul(p, '/');
    len = (size_t)(e - p);
    if (!len || len > NAME_MAX || (len == 1 && p[0] == '.')
        || (len == 2 && p[0] == '.' && p[1] == '.'))
      return -EINVAL; /* also a trailing or doubled '/' */
    if (!missing && !(c = fs_child_named(f, dir, p, len)))
      missing = 1;
    if (!*e) /* the file itself */
      break;
    if (!missing && f->nodes[c - 1].file >= 0)
      return -ENOTDIR;
    if (missing && !dry) {
      if ((ret = fs_new_node(f, dir, p, len, -1)) < 0)
        return ret;
      c = (uint32_t)ret + 1;
    }
    if (!missing || !dry)
      dir = c - 1;
    p = e + 1;
  }
  if (!missing)
    return -EEXIST;
  return dry ? 0 : fs_new_node(f, dir, p, len, f->nfiles);
}

int icd_fuse_add_file(struct icd_fuse *f, const char *path, int fresh_ms, int max_stale_ms,
                      uint64_t size)
{
  int ret;

  if (f->mountpoint)
    return -EBUSY;
  if (fresh_ms < 0 || max_stale_ms < fresh_ms)
    return -EINVAL;
  if ((ret = make_path(f, path, 1)) < 0)
    return ret;
  if (f->nfiles == f->capfiles) {
    int cap = f->capfiles ? f->capfiles * 2 : 32;
    struct fspec *s = realloc(f->files, (size_t)cap * sizeof *s);
    if (!s)
      return -ENOMEM;
    f->files = s;
    f->capfiles = cap;
  }
  if ((ret = make_path(f, path, 0)) < 0)
    return ret;
  memset(&f->files[f->nfiles], 0, sizeof f->files[0]);
  f->files[f->nfiles].node = (uint32_t)ret;
  f->files[f->nfiles].fresh_ns = (int64_t)fresh_ms * 1000000;
  f->files[f->nfiles].stale_ns = (int64_t)max_stale_ms * 1000000;
  f->files[f->nfiles].size = size;
  return f->nfiles++;
}

int icd_fuse_writable(struct icd_fuse *f, int file)
{
  if (f->mountpoint)
    return -EBUSY;
  if (file < 0 || file >= f->nfiles)
    return -EINVAL;
  f->files[file].writable = 1;
  return 0;
}

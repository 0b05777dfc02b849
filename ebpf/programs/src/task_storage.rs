//! A BTF-defined `BPF_MAP_TYPE_TASK_STORAGE` map.
//!
//! aya-ebpf ships BTF maps for inode, socket and cgroup storage but not task
//! storage; this follows the same layout (the loader reads the map's type,
//! key, value and flags from the BTF of these pointer fields).

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
};

const TASK_STORAGE: usize = bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize;
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; TASK_STORAGE],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; NO_PREALLOC],
}

// SAFETY: the fields are BTF placeholders the loader replaces with a map
// reference; Rust never dereferences them.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    #[inline(always)]
    fn get(&self, flags: u64) -> *mut T {
        // SAFETY: `bpf_get_current_task_btf` always returns the running task.
        self.get_for(unsafe { bpf_get_current_task_btf() }.cast(), flags)
    }

    #[inline(always)]
    fn get_for(&self, task: *mut c_void, flags: u64) -> *mut T {
        // SAFETY: `task` is a trusted task pointer (the current task or a
        // tp_btf argument); the helper returns null or a pointer to that
        // task's zero-initialised value.
        unsafe {
            bpf_task_storage_get(
                ptr::from_ref(self).cast_mut().cast::<c_void>(),
                task.cast(),
                ptr::null_mut(),
                flags,
            )
            .cast()
        }
    }

    /// The value of `task` (a trusted `task_struct` pointer), created zeroed if missing.
    #[inline(always)]
    pub fn of_or_create(&self, task: *mut c_void) -> Option<*mut T> {
        let p = self.get_for(task, BPF_LOCAL_STORAGE_GET_F_CREATE.into());
        (!p.is_null()).then_some(p)
    }

    /// The value of `task` (a trusted `task_struct` pointer), if it has one.
    #[inline(always)]
    pub fn of(&self, task: *mut c_void) -> Option<*mut T> {
        let p = self.get_for(task, 0);
        (!p.is_null()).then_some(p)
    }

    /// The current task's value, if it has one.
    #[inline(always)]
    pub fn current(&self) -> Option<*mut T> {
        let p = self.get(0);
        (!p.is_null()).then_some(p)
    }

    /// The current task's value, created zeroed if missing; `None` only when
    /// the kernel cannot allocate it.
    #[inline(always)]
    pub fn current_or_create(&self) -> Option<*mut T> {
        let p = self.get(BPF_LOCAL_STORAGE_GET_F_CREATE.into());
        (!p.is_null()).then_some(p)
    }
}

#pragma once
#include <hdf5.h>
// HDF5's type and flag macros call H5open and read globals that fail Swift 6 concurrency checks.
static inline hid_t starling_h5t_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t starling_h5t_native_double(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t starling_h5t_native_uint8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t starling_h5t_native_int8(void) { return H5T_NATIVE_INT8; }
static inline hid_t starling_h5t_native_uint16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t starling_h5t_native_int16(void) { return H5T_NATIVE_INT16; }
static inline hid_t starling_h5t_native_int32(void) { return H5T_NATIVE_INT32; }
static inline hid_t starling_h5t_native_uint32(void) { return H5T_NATIVE_UINT32; }
static inline hid_t starling_h5t_native_int64(void) { return H5T_NATIVE_INT64; }
static inline hid_t starling_h5t_native_uint64(void) { return H5T_NATIVE_UINT64; }
// Little-endian file types, so files written here read the same on any machine.
static inline hid_t starling_h5t_std_u8le(void) { return H5T_STD_U8LE; }
static inline hid_t starling_h5t_std_i8le(void) { return H5T_STD_I8LE; }
static inline hid_t starling_h5t_std_u16le(void) { return H5T_STD_U16LE; }
static inline hid_t starling_h5t_std_i16le(void) { return H5T_STD_I16LE; }
static inline hid_t starling_h5t_std_i32le(void) { return H5T_STD_I32LE; }
static inline hid_t starling_h5t_std_i64le(void) { return H5T_STD_I64LE; }
static inline hid_t starling_h5t_ieee_f32le(void) { return H5T_IEEE_F32LE; }
static inline hid_t starling_h5t_ieee_f64le(void) { return H5T_IEEE_F64LE; }
/// HDF5 1.10 has no predefined half-precision type (H5T_IEEE_F16LE arrived in 1.14.4). Build the IEEE 754
/// binary16 layout the way h5py does: sign bit 15, exponent bits 10-14 (bias 15), mantissa bits 0-9.
/// Returns a new type id the caller must H5Tclose, or a negative value on failure.
static inline hid_t starling_h5t_create_f16le(void) {
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0) return t;
    if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 15) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}
static inline hid_t starling_h5t_c_s1(void) { return H5T_C_S1; }
static inline hid_t starling_h5p_file_access(void) { return H5P_FILE_ACCESS; }
static inline hid_t starling_h5p_file_create(void) { return H5P_FILE_CREATE; }
static inline hid_t starling_h5p_dataset_create(void) { return H5P_DATASET_CREATE; }
static inline hid_t starling_h5p_link_create(void) { return H5P_LINK_CREATE; }
static inline hid_t starling_h5p_group_create(void) { return H5P_GROUP_CREATE; }
static inline unsigned starling_h5f_acc_trunc(void) { return H5F_ACC_TRUNC; }
static inline unsigned starling_h5f_acc_excl(void) { return H5F_ACC_EXCL; }
static inline unsigned starling_h5f_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline unsigned starling_h5f_acc_rdwr(void) { return H5F_ACC_RDWR; }
static inline size_t starling_h5t_variable(void) { return H5T_VARIABLE; }
#include <sys/types.h>
/// The per-file state of Starling's guarded file driver (StarlingIO's HDF5GuardedDriver.swift). HDF5 requires the
/// public H5FD_t to be the first member of a driver's file struct.
typedef struct starling_guarded_file {
    H5FD_t pub;
    int fd;
    haddr_t eoa;
    haddr_t eof;
    dev_t device;
    ino_t inode;
    /// The global heap collection last checked, [start, end): reads inside it are its continuation.
    haddr_t checked_start;
    haddr_t checked_end;
    /// Seconds each read sleeps (a test hook: an HDF5 call that does not return); 0 outside tests.
    double stall_seconds;
} starling_guarded_file;

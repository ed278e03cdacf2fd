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
static inline hid_t starling_h5t_ieee_f16le(void) { return H5T_IEEE_F16LE; }
static inline hid_t starling_h5t_c_s1(void) { return H5T_C_S1; }
static inline hid_t starling_h5p_file_access(void) { return H5P_FILE_ACCESS; }
static inline hid_t starling_h5p_dataset_create(void) { return H5P_DATASET_CREATE; }
static inline hid_t starling_h5p_link_create(void) { return H5P_LINK_CREATE; }
static inline unsigned starling_h5f_acc_trunc(void) { return H5F_ACC_TRUNC; }
static inline unsigned starling_h5f_acc_excl(void) { return H5F_ACC_EXCL; }
static inline unsigned starling_h5f_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline unsigned starling_h5f_acc_rdwr(void) { return H5F_ACC_RDWR; }
static inline size_t starling_h5t_variable(void) { return H5T_VARIABLE; }

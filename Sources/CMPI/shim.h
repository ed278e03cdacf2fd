#pragma once
#include <mpi.h>
// Open MPI's handles are macros over global structs, which Swift cannot import: expose them as functions.
static inline MPI_Comm starling_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm starling_mpi_comm_self(void) { return MPI_COMM_SELF; }
static inline MPI_Datatype starling_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype starling_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype starling_mpi_int32(void) { return MPI_INT32_T; }
static inline MPI_Datatype starling_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype starling_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Op starling_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op starling_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op starling_mpi_min(void) { return MPI_MIN; }
static inline void *starling_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Status *starling_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Request starling_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Errhandler starling_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Datatype starling_mpi_uint16(void) { return MPI_UINT16_T; }
static inline MPI_Op starling_mpi_op_null(void) { return MPI_OP_NULL; }

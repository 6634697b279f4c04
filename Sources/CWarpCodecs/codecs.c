/* CWarpCodecs has only static inline helpers in its header; this unit makes
   the target a library the linker settings of Package.swift hang on. */
#include "CWarpCodecs.h"

#pragma once
#include <png.h>
// The simplified png_image API reports errors through return values; the classic API needs setjmp.
static inline png_uint_32 starling_png_format_rgb(void) { return PNG_FORMAT_RGB; }
static inline png_uint_32 starling_png_format_rgba(void) { return PNG_FORMAT_RGBA; }
static inline png_uint_32 starling_png_format_gray(void) { return PNG_FORMAT_GRAY; }
static inline png_uint_32 starling_png_format_flag_alpha(void) { return PNG_FORMAT_FLAG_ALPHA; }
static inline png_uint_32 starling_png_format_flag_color(void) { return PNG_FORMAT_FLAG_COLOR; }
static inline png_uint_32 starling_png_image_version(void) { return PNG_IMAGE_VERSION; }
static inline int starling_png_failed(png_imagep image) { return PNG_IMAGE_FAILED(*image); }

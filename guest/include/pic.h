#ifndef PIC_H
#define PIC_H
void pic_disable(void);   /* remap to 0x20-0x2F and mask everything */
#endif
